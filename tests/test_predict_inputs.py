"""predict fails loudly when most images cannot be read (a wrong image root), not with `[]`."""

import pytest

from oln.detector.predict import check_skipped


def test_mostly_unreadable_images_fail_with_the_root_and_a_file():
    with pytest.raises(ValueError, match=r"3 of 4 images under /wrong/root .* first: /wrong/root/a.jpg"):
        check_skipped(3, 4, 0.5, "/wrong/root", ["/wrong/root/a.jpg", "b", "c"])


def test_a_few_unreadable_images_are_skipped_with_a_count(caplog):
    check_skipped(1, 4, 0.5, "/root", ["/root/a.jpg"])
    assert "skipped 1 of 4 unreadable images under /root" in caplog.text
    check_skipped(0, 0, 0.5, "/root", [])
