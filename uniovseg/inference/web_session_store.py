"""The open photo sessions of one web app (:mod:`uniovseg.inference.web_app`), by id."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict

from uniovseg.inference.web_session import WebImageSession

__all__ = ["WebSessionStore"]

logger = logging.getLogger(__name__)


class WebSessionStore:
    """The open photo sessions of one app, by id; at most ``max_sessions`` (each holds its
    photo's encoding in memory): opening one more closes the least recently used."""

    def __init__(self, predictor, *, max_side: int | None = 1600, max_sessions: int = 8) -> None:
        """
        Args:
            predictor: The app's :class:`~uniovseg.inference.predictor.UniOVSegPredictor`.
            max_side: See :class:`WebImageSession`.
            max_sessions: Photos kept encoded at once (>= 1).
        """
        from uniovseg.inference.automatic_mask_generator_api import AutomaticMaskGenerator

        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.predictor = predictor
        self.generator = AutomaticMaskGenerator.from_predictor_config(predictor)
        self.max_side = max_side
        self.max_sessions = max_sessions
        self._model_lock = threading.Lock()
        self._guard = threading.Lock()
        self._sessions: OrderedDict[str, WebImageSession] = OrderedDict()

    def open(self, path: str, display_name: str | None = None) -> str:
        """Reads and encodes a photo; returns its session id."""
        session = WebImageSession(
            self.predictor,
            self.generator,
            path,
            max_side=self.max_side,
            lock=self._model_lock,
            display_name=display_name,
        )
        session_id = uuid.uuid4().hex
        with self._guard:
            self._sessions[session_id] = session
            evicted = []
            while len(self._sessions) > self.max_sessions:
                evicted.append(self._sessions.popitem(last=False)[1])
        for old in evicted:
            logger.info("closing the least recently used photo session (%d open)", len(self))
            old.close()
        return session_id

    def get(self, session_id: str | None) -> WebImageSession:
        """The session; ValueError when there is none (no upload yet, or closed)."""
        with self._guard:
            session = self._sessions.get(session_id) if session_id else None
            if session is None:
                if session_id:
                    raise ValueError(
                        "this photo was closed to free memory (too many open photos); "
                        "upload it again"
                    )
                raise ValueError("upload a photo first")
            self._sessions.move_to_end(session_id)
            return session

    def close(self, session_id: str | None) -> None:
        """Closes a session (unknown ids are ignored)."""
        with self._guard:
            session = self._sessions.pop(session_id, None) if session_id else None
        if session is not None:
            session.close()

    def close_all(self) -> None:
        with self._guard:
            sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        for session in sessions:
            session.close()

    def __len__(self) -> int:
        return len(self._sessions)
