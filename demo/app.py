"""The web app (Gradio): upload a photo, click points or draw a box, type class names, segment
everything, download the JSON.

    python demo/app.py --model output/quickstart/bundles/stage2      # then open the printed URL
    python demo/app.py --config-file stage2/uniovseg_convnext_large_stage2.yaml \
        --opts MODEL.WEIGHTS model_final.pth

The app lives in :mod:`uniovseg.inference.web_app`; ``python demo/app.py --help`` lists its
options (``--host``/``--port``: it serves on 127.0.0.1:7860 by default, and never makes a share
link).
"""

import sys

from uniovseg.inference.web_app import main

if __name__ == "__main__":
    sys.exit(main())
