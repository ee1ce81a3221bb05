"""GGN's training recipe in small hand-checked cases: image filtering and epoch schedules."""

from __future__ import annotations

import json

import pytest

from oln.data.filtering import images_with_training_annotations
from oln.engine import TrainOptions
from oln.schedule import resolve_schedule

IMAGES = [
    {"id": 1, "width": 640, "height": 480},   # a seen object -> kept
    {"id": 2, "width": 640, "height": 480},   # only an unseen object -> dropped
    {"id": 3, "width": 640, "height": 480},   # no annotation at all -> dropped
    {"id": 4, "width": 31, "height": 480},    # a seen object but a side under 32 px -> dropped
    {"id": 5, "width": 32, "height": 32},     # a seen crowd region only -> kept (COCO's cat-to-image index)
    {"id": 6, "width": 640, "height": 480},   # a pseudo mask of the training split only -> dropped
    {"id": 7, "width": 640, "height": 480},   # a pseudo mask of the unlabeled source -> kept (no GT by construction)
]
ANNOTATIONS = [
    {"image_id": 1, "category_id": 1},
    {"image_id": 2, "category_id": 7},
    {"image_id": 4, "category_id": 1},
    {"image_id": 5, "category_id": 1, "iscrowd": 1},
    {"image_id": 6, "category_id": 1, "pseudo": 1, "source": "train"},
    {"image_id": 7, "category_id": 13, "pseudo": 1, "source": "unlabeled"},
]


def test_only_images_with_seen_annotations_and_32px_sides_are_kept():
    kept = images_with_training_annotations(IMAGES, ANNOTATIONS, [1, 2])
    assert [im["id"] for im in kept] == [1, 5, 7]
    assert [im["id"] for im in images_with_training_annotations(IMAGES, ANNOTATIONS, None)] == [1, 2, 5, 7]


def test_coco_instances_train_only_on_filtered_images(tmp_path):
    from oln.data.coco import CocoInstances

    data = {"images": [{**im, "file_name": f"{im['id']}.jpg"} for im in IMAGES],
            "annotations": [{**a, "id": i, "bbox": [1, 1, 5, 5], "area": 25, "segmentation": [[1, 1, 6, 1, 6, 6]]}
                            for i, a in enumerate(ANNOTATIONS)],
            "categories": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    assert len(CocoInstances(path, tmp_path, [1])) == 7
    filtered = CocoInstances(path, tmp_path, [1], filter_empty_gt=True)
    assert [im["id"] for im in filtered.images] == [1, 5, 7]


def test_epoch_schedule_counts_the_filtered_images():
    # GGN's detector: 8 epochs, steps after 6 and 7, 2 images per GPU on 8 GPUs.
    options = TrainOptions(iterations=0, epochs=8, lr_step_epochs=[6, 7], batch_size=2)
    resolved = resolve_schedule(options, dataset_size=1000, world_size=8)  # 1000 / 16 -> 63 steps per epoch
    assert resolved.iterations == 8 * 63
    assert resolved.lr_steps == [6 * 63, 7 * 63]
    assert options.iterations == 0  # the input is not modified


def test_explicit_iterations_win_and_a_missing_schedule_is_an_error():
    explicit = TrainOptions(iterations=300, epochs=8, lr_steps=[200])
    assert resolve_schedule(explicit, 1000, 1) is explicit
    with pytest.raises(ValueError, match="epochs"):
        resolve_schedule(TrainOptions(iterations=0, epochs=0), 1000, 1)
