"""Demo pictures (uniovseg.inference.visualization): no text over automatic masks unless asked,
legends beside or under the image that never cover it and list only the classes present by
area, prompted masks in their prompt's colour, coloured label maps."""

import numpy as np
import pytest

from uniovseg.inference import visualization as vis


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _disk(height, width, cx, cy, r):
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def _rows_with(panel, color):
    """Rows of ``panel`` holding the exact colour ``color`` (swatches are solid)."""
    return np.flatnonzero((panel == np.array(color, np.uint8)).all(axis=2).any(axis=1))


def test_automatic_masks_carry_no_text_unless_the_first_few_are_asked_for():
    image = _image(120, 120)
    masks = np.stack([_disk(120, 120, 30 + 15 * k, 60, 12) for k in range(5)])
    labels = [f"iou 0.{k}" for k in range(5)]
    plain = vis.draw_masks(image, masks)
    assert plain.shape == image.shape  # no classes: no legend, the picture keeps its size
    np.testing.assert_array_equal(vis.draw_masks(image, masks, labels=labels), plain)
    labelled = vis.draw_masks(image, masks, labels=labels, max_labels=2)
    assert labelled.shape == plain.shape and (labelled != plain).any()
    # The two labels are drawn inside the first two masks only.
    changed = (labelled != plain).any(axis=2)
    assert not changed[:, 90:].any()


def test_an_image_without_masks_is_drawn_unchanged():
    # The demo's automatic task on an image where no mask survives the filters.
    image = _image(40, 60)
    out = vis.draw_masks(image, np.zeros((0, 40, 60), bool))
    np.testing.assert_array_equal(out, image)


def test_mask_fill_and_outline_leave_the_rest_of_the_image_untouched():
    image = _image(100, 100)
    mask = np.zeros((1, 100, 100), bool)
    mask[0, 40:60, 40:60] = True
    out = vis.draw_masks(image, mask, alpha=1.0)
    np.testing.assert_array_equal(
        out[45:55, 45:55], np.broadcast_to(vis.class_color(0), (10, 10, 3))
    )
    far = np.ones((100, 100), bool)
    far[35:65, 35:65] = False
    np.testing.assert_array_equal(out[far], image[far])


@pytest.mark.parametrize("size, beside", [((90, 80), True), ((60, 200), False)])
def test_semantic_legend_sits_beside_or_under_the_image_and_lists_present_classes_by_area(
    size, beside
):
    height, width = size
    image = _image(height, width)
    labels = np.full(size, -1)
    labels[:, : width // 2] = 3  # the largest class
    labels[: height // 2, width // 2 :] = 0
    labels[height // 2 :, width // 2 : width // 2 + 5] = 1  # the smallest
    names = ["sky", "tree", "car", "road", "person"]
    out = vis.draw_semantic(image, labels, names, alpha=1.0)
    if beside:
        assert out.shape[0] == height and out.shape[1] > width
        panel = out[:, width:]
    else:
        assert out.shape[1] == width and out.shape[0] > height
        panel = out[height:]
    # Unlabelled pixels away from region outlines are the image's own.
    assert labels[-1, -1] == -1
    np.testing.assert_array_equal(out[height - 3 : height, width - 3 : width], image[-3:, -3:])
    # Swatches of the present classes only, largest area first (columns of a wide legend are
    # filled top to bottom, then left to right: compare positions in reading order).
    positions = {}
    for c in range(len(names)):
        rows = _rows_with(panel, vis.class_color(c))
        if rows.size:
            cols = np.flatnonzero(
                (panel[rows[0]] == np.array(vis.class_color(c), np.uint8)).all(axis=1)
            )
            positions[c] = (int(cols[0]), int(rows[0]))
    assert set(positions) == {0, 1, 3}
    assert sorted(positions, key=lambda c: positions[c]) == [3, 0, 1]


def test_panoptic_instances_of_one_class_get_their_own_shades_and_one_legend_line():
    image = _image(80, 80)
    seg = np.zeros((80, 80), np.int32)
    seg[:40] = 1
    seg[50:70, 10:30] = 2
    seg[50:70, 40:60] = 3
    info = [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
        {"id": 3, "category_id": 0, "isthing": True},
    ]
    out = vis.draw_panoptic(image, seg, info, ["person", "car", "sky"], alpha=1.0)
    assert out.shape[0] == 80 and out.shape[1] > 80
    assert (out[60, 20] != out[60, 50]).any()  # two people, two shades
    panel = out[:, 80:]
    assert _rows_with(panel, vis.class_color(2))[0] < _rows_with(panel, vis.class_color(0))[0]
    assert _rows_with(panel, vis.class_color(1)).size == 0  # "car" is absent


def test_each_prompt_and_its_masks_share_a_colour_that_the_legend_repeats():
    image = _image(100, 100)
    point_mask = _disk(100, 100, 25, 25, 15)
    box_mask = np.zeros((100, 100), bool)
    box_mask[60:90, 55:95] = True
    out = vis.draw_prompts(
        image,
        [point_mask[None], box_mask],
        points=np.array([[25.0, 25.0]]),
        boxes=np.array([[50.0, 55.0, 98.0, 95.0]]),
        texts=[["car 80%, iou 0.90"], "road 60%, iou 0.70"],
        alpha=1.0,
    )
    first, second = vis.class_color(0), vis.class_color(1)
    np.testing.assert_array_equal(out[25, 12], first)  # inside mask 1, off its marker
    np.testing.assert_array_equal(out[85, 85], second)  # inside mask 2
    panel = out[:, 100:]
    assert _rows_with(panel, first).size and _rows_with(panel, second).size
    assert _rows_with(panel, first)[0] < _rows_with(panel, second)[0]  # legend in prompt order
    with pytest.raises(ValueError, match="2 prompts but 1 points"):
        vis.draw_prompts(image, [point_mask, box_mask], points=np.array([[1.0, 1.0]]))


def test_colorized_label_map_uses_class_colours_and_black_for_unlabelled():
    labels = np.array([[0, 1], [255, 2]])
    out = vis.colorize_labels(labels, 3)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], vis.class_color(0))
    np.testing.assert_array_equal(out[1, 1], vis.class_color(2))
    np.testing.assert_array_equal(out[1, 0], [0, 0, 0])
    assert len({tuple(vis.class_color(c)) for c in range(3)}) == 3


def test_long_legends_are_cut_with_a_count_of_the_rest():
    image = _image(64, 64)
    entries = [vis.LegendEntry(vis.class_color(k), f"class {k}") for k in range(40)]
    out = vis.add_legend(image, entries)
    np.testing.assert_array_equal(out[:64, :64], image)
    panel = out[:, 64:]
    shown = [k for k in range(40) if _rows_with(panel, vis.class_color(k)).size]
    # 23 swatches and a "+ 17 more" line (colours repeat after 64, so no aliasing here)
    assert shown == list(range(23))


def test_marked_points_are_drawn_at_the_prompt_marker_size_and_nowhere_else():
    image = _image(100, 100)
    picture = vis.add_legend(image, [vis.LegendEntry(vis.class_color(0), "a long legend line")])
    out = vis.mark_points(picture, np.array([[20.0, 30.0]]), text="x", image_size=(100, 100))
    assert out.shape == picture.shape and out is not picture
    changed = np.argwhere((out != picture).any(axis=2))
    # Centred on the point, as large as draw_prompts' markers on a 100 px image (11 px text).
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert abs((x0 + x1) / 2 - 20) <= 1 and abs((y0 + y1) / 2 - 30) <= 1
    reference = vis.draw_prompts(image, [np.zeros((100, 100), bool)], points=[[20.0, 30.0]])
    marker = np.argwhere((reference[:100, :100] != image).any(axis=2))
    assert np.abs((y1 - y0) - np.ptp(marker[:, 0])) <= 2
    assert (np.hypot(changed[:, 1] - 20, changed[:, 0] - 30) <= 12).all()  # nowhere else
