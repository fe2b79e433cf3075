"""Dataset ingestion: layouts, health report, hostile input, colour modes, split, decode cache."""
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import class_members, image_bytes, write_tree, write_zip
from vit import cli, data
from vit.data import DataError, DecodeCache, Limits, load_dataset, read_rgb


def files_outside(root: Path, allowed: list[Path]) -> list[Path]:
    """Every file under root that is not under one of `allowed`."""
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not any(p == a or a in p.parents for a in allowed):
            out.append(p)
    return out


def reasons(ds) -> dict:
    return {s.name: s.reason for s in ds.report.skipped}


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("prefix", ["", "pets/", "outer/pets/"])
def test_zip_of_class_folders_with_or_without_enclosing_folder(tmp_path, workspace_root, prefix):
    z = write_zip(tmp_path / "d.zip", class_members(n=5, prefix=prefix))
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert ds.classes == ["cat", "dog"]
        assert ds.report.counts == {"cat": 5, "dog": 5}
        assert ds.report.ok and ds.report.layout == "class folders"
        assert {it.name for it in ds.items} >= {"cat/000.png", "dog/004.png"}
        assert all(it.path.is_file() and workspace_root in it.path.parents for it in ds.items)
        ws = ds.workspace
        assert ws.is_dir()
    assert not ws.exists(), "the workspace is removed when the dataset is closed"
    assert list(workspace_root.iterdir()) == []


def test_zip_already_split_keeps_given_split(tmp_path, workspace_root):
    members = {**class_members(n=4, prefix="train/"), **class_members(n=2, prefix="val/", seed0=100),
               **class_members(n=1, prefix="test/", seed0=200)}
    z = write_zip(tmp_path / "d.zip", {f"data/{k}": v for k, v in members.items()})
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert ds.report.layout == "train/val class folders"
        assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 2)
        assert {ds.items[i].split for i in ds.val} == {"val"}
        assert ds.report.split_counts["val"] == {"cat": 2, "dog": 2}


def test_split_layout_with_train_only_is_split_by_us(tmp_path):
    write_tree(tmp_path / "d", class_members(n=10, prefix="train/"))
    with load_dataset(tmp_path / "d") as ds:
        assert len(ds.val) == 4 and len(ds.train) == 16
        assert ds.workspace is None


def test_directory_layout_reads_in_place_with_nested_subfolders(tmp_path):
    members = class_members(n=3)
    members["cat/indoor/extra.png"] = image_bytes(seed=99)
    root = write_tree(tmp_path / "d", members)
    with load_dataset(root) as ds:
        assert ds.report.counts == {"cat": 4, "dog": 3}
        assert any(it.name == "cat/indoor/extra.png" and it.label == "cat" for it in ds.items)
        assert all(root in it.path.parents for it in ds.items)
    assert (root / "cat/000.png").exists(), "closing a folder dataset never deletes the user's files"


def test_per_class_uploads(tmp_path):
    files = write_tree(tmp_path / "up", class_members(("a", "b"), n=3))
    uploads = {"Apples": sorted((files / "a").iterdir()), " Bananas ": sorted((files / "b").iterdir())}
    with load_dataset(uploads) as ds:
        assert ds.classes == ["Apples", "Bananas"]
        assert ds.report.layout == "per-class uploads"
        assert ds.report.counts == {"Apples": 3, "Bananas": 3}


def test_per_class_uploads_bad_class_names(tmp_path):
    f = write_tree(tmp_path, {"x.png": image_bytes(seed=1)}) / "x.png"
    with pytest.raises(DataError, match="no name"):
        load_dataset({"  ": [f], "b": [f]})
    with pytest.raises(DataError, match="both named 'cat'"):
        load_dataset({"cat": [f], "Cat": [f]})
    with pytest.raises(DataError, match="'/'"):
        load_dataset({"../etc": [f], "b": [f]})


def test_per_class_upload_with_no_images_is_named(tmp_path):
    files = write_tree(tmp_path / "up", class_members(("a", "b"), n=3))
    ds = load_dataset({"a": list((files / "a").iterdir()), "b": list((files / "b").iterdir()), "empty": []})
    assert not ds.report.ok
    assert any("'empty' has no images" in e for e in ds.report.errors)


def test_manifest_csv_in_zip(tmp_path, workspace_root):
    members = {f"img/{i}.png": image_bytes(seed=i) for i in range(6)}
    members["labels.csv"] = ("path,label\n" + "".join(f"img/{i}.png,{'odd' if i % 2 else 'even'}\n"
                                                      for i in range(5)) + "../../etc/passwd,even\nmissing.png,odd\n")
    z = write_zip(tmp_path / "m.zip", {f"wrap/{k}": v for k, v in members.items()})
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert ds.report.layout == "labels.csv manifest"
        assert ds.report.counts == {"even": 3, "odd": 2}
        r = reasons(ds)
        assert "not listed in labels.csv" in r["img/5.png"]
        assert any("points outside" in v for v in r.values())
        assert any("not in the dataset" in v for v in r.values())


def test_manifest_with_split_column(tmp_path):
    members = {f"{i}.png": image_bytes(seed=i) for i in range(8)}
    rows = [f"{i}.png,{'a' if i < 4 else 'b'},{'val' if i in (0, 4) else 'train'}" for i in range(8)]
    members["labels.csv"] = "path,label,split\n" + "\n".join(rows)
    with load_dataset(write_tree(tmp_path / "d", members)) as ds:
        assert sorted(ds.items[i].name for i in ds.val) == ["0.png", "4.png"]


def test_manifest_without_required_columns(tmp_path):
    root = write_tree(tmp_path / "d", {"a.png": image_bytes(seed=1), "labels.csv": "file,class\na.png,x\n"})
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_dataset(root)


def test_junk_is_ignored_silently(tmp_path, workspace_root):
    members = class_members(n=3)
    members.update({"__MACOSX/cat/._000.png": b"\0\5\x16\7junk", "cat/.DS_Store": b"junk",
                    "dog/Thumbs.db": b"junk", "cat/._001.png": b"junk", "desktop.ini": b"x"})
    with load_dataset(write_zip(tmp_path / "d.zip", members), workspace_root=workspace_root) as ds:
        assert ds.report.skipped == []
        assert ds.report.total == 6


def test_non_image_files_are_reported(tmp_path):
    members = class_members(n=3)
    members["cat/notes.txt"] = b"hello"
    members["dog/broken.jpg"] = b"not really a jpeg"
    members["README.md"] = b"# data"
    with load_dataset(write_tree(tmp_path / "d", members)) as ds:
        r = reasons(ds)
        assert r["cat/notes.txt"] == "not an image file"
        assert "corrupt or unreadable" in r["dog/broken.jpg"]
        assert "not inside a class folder" in r["README.md"]
        assert ds.report.ok and ds.report.total == 6


def test_not_a_zip_nor_folder(tmp_path):
    f = tmp_path / "data.rar"
    f.write_bytes(b"Rar!\x1a\x07\x00 not supported")
    with pytest.raises(DataError, match="neither a folder nor a .zip"):
        load_dataset(f)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


# ---------------------------------------------------------------- verdict: errors and warnings


def test_error_no_images(tmp_path):
    (tmp_path / "d").mkdir()
    ds = load_dataset(tmp_path / "d")
    assert not ds.report.ok and "No images found" in ds.report.errors[0]


def test_error_one_class(tmp_path):
    ds = load_dataset(write_tree(tmp_path / "d", class_members(("only",), n=4)))
    assert not ds.report.ok and "Only one class found ('only')" in ds.report.errors[0]


def test_error_class_with_one_image_is_named(tmp_path):
    members = class_members(("cat",), n=4)
    members["rare/1.png"] = image_bytes(seed=77)
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert not ds.report.ok
    assert ds.report.errors == ["Class 'rare' has only 1 image; each class needs at least 2 "
                                "(one to train on, one to validate)."]


def test_error_nothing_readable(tmp_path):
    ds = load_dataset(write_tree(tmp_path / "d", {"a/1.jpg": b"xx", "b/1.jpg": b"yy", "b/2.png": b""}))
    assert not ds.report.ok
    assert "No usable images: all 3 files were skipped" in ds.report.errors[0]


def test_warnings_imbalance_tiny_class_small_images(tmp_path):
    members = class_members(("big",), n=30)
    members.update({f"small/{i}.png": image_bytes(seed=500 + i, size=(20, 20)) for i in range(3)})
    ds = load_dataset(write_tree(tmp_path / "d", members))
    text = " ".join(ds.report.warnings)
    assert ds.report.ok
    assert ds.report.imbalance_ratio == 10
    assert "imbalanced: 'big' has 30 images, 'small' has 3 (ratio 10.0)" in text
    assert "'small' has fewer than 10 images" in text
    assert "3 image(s) have a side shorter than 64 px" in text


def test_duplicates_within_a_class_are_skipped(tmp_path):
    members = class_members(n=3)
    members["cat/copy.png"] = members["cat/000.png"]
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert reasons(ds)["cat/copy.png"] == "exact duplicate of cat/000.png"
    assert ds.report.counts["cat"] == 3
    assert ds.report.duplicates == [["cat/000.png", "cat/copy.png"]]


def test_duplicate_across_train_and_val_is_leakage(tmp_path):
    members = {**class_members(n=4, prefix="train/"), **class_members(n=2, prefix="val/", seed0=100)}
    members["val/cat/leak.png"] = members["train/cat/001.png"]
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert ds.report.leakage == [["train/cat/001.png", "val/cat/leak.png"]]
    assert any("appear in both train and val/test" in w for w in ds.report.warnings)


def test_same_image_in_two_classes_is_a_label_conflict(tmp_path):
    members = class_members(n=3)
    members["dog/same.png"] = members["cat/000.png"]
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert any("labelled 'cat', 'dog'" in w for w in ds.report.warnings)
    r = reasons(ds)
    assert "also labelled 'dog'" in r["cat/000.png"] and "also labelled 'cat'" in r["dog/same.png"]
    assert ds.report.counts == {"cat": 2, "dog": 3}, "an image of ambiguous label trains neither class"


def test_class_whose_images_are_all_skipped_is_named_not_dropped(tmp_path):
    members = class_members(("beach",), n=6)
    members.update({f"mountain/{i}.jpg": members[f"beach/{i:03d}.png"] for i in range(3)})
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert ds.classes == ["beach", "mountain"]
    assert ds.report.errors == ["Class 'mountain' has no usable images (3 of its files were skipped; the report lists "
                                "why); each class needs at least 2 (one to train on, one to validate)."]


def test_of_two_copies_the_original_name_is_kept(tmp_path):
    members = class_members(n=3)
    members["cat/000 copy.png"] = members["cat/000.png"]
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert reasons(ds)["cat/000 copy.png"] == "exact duplicate of cat/000.png"


# ---------------------------------------------------------------- hostile input


def _patch_name(zip_path: Path, placeholder: bytes, replacement: bytes):
    raw = zip_path.read_bytes()
    assert len(placeholder) == len(replacement)
    raw = raw.replace(placeholder, replacement)
    zip_path.write_bytes(raw)


def test_zip_slip_absolute_and_drive_letter_names_never_escape(tmp_path, workspace_root):
    members = class_members(n=3)
    members.update({"../evil.png": image_bytes(seed=9), "cat/../../evil2.png": image_bytes(seed=10),
                    "C:/Windows/evil3.png": image_bytes(seed=11), "..\\..\\evil4.png": image_bytes(seed=12)})
    z = tmp_path / "slip.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
        info = zipfile.ZipInfo("cat/abs.png")
        zf.writestr(info, image_bytes(seed=13))
    _patch_name(z, b"cat/abs.png", b"/tmp/ab.png")  # an absolute path zipfile would not write itself
    with load_dataset(z, workspace_root=workspace_root) as ds:
        unsafe = [s for s in ds.report.skipped if "outside the dataset" in s.reason]
        assert len(unsafe) == 5, ds.report.skipped
        assert ds.report.total == 6
        assert files_outside(tmp_path, [z, workspace_root]) == []
    assert not (tmp_path.parent / "evil.png").exists()
    assert not Path("/tmp/ab.png").exists()


def test_symlink_entry_in_zip_is_not_followed(tmp_path, workspace_root):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name, payload in class_members(n=3).items():
            zf.writestr(name, payload)
        info = zipfile.ZipInfo("cat/passwd.png")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert "symbolic link" in reasons(ds)["cat/passwd.png"]
        assert not any(os.path.islink(p) for p in workspace_root.rglob("*"))


def test_symlink_in_folder_pointing_outside_is_skipped(tmp_path):
    root = write_tree(tmp_path / "d", class_members(n=3))
    secret = write_tree(tmp_path / "secret", {"s.png": image_bytes(seed=55)}) / "s.png"
    (root / "cat" / "link.png").symlink_to(secret)
    ds = load_dataset(root)
    assert "outside the dataset folder" in reasons(ds)["cat/link.png"]


def test_zip_bomb_ratio_cap(tmp_path, workspace_root):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in class_members(n=3).items():
            zf.writestr(name, payload)
        zf.writestr("cat/zeros.bmp", b"\0" * (20 * 1024 * 1024))
    with pytest.raises(DataError, match=r"compression-ratio cap of 200 \(max_ratio\)"):
        load_dataset(z, workspace_root=workspace_root)
    assert list(workspace_root.iterdir()) == [], "a refused upload leaves nothing behind"


def test_zip_total_bytes_cap(tmp_path, workspace_root):
    z = write_zip(tmp_path / "big.zip", class_members(n=3))
    with pytest.raises(DataError, match=r"over the cap of .* \(max_total_bytes\)"):
        load_dataset(z, workspace_root=workspace_root, limits=Limits(max_total_bytes=1000))
    assert list(workspace_root.iterdir()) == []


def test_zip_file_count_cap(tmp_path, workspace_root):
    z = write_zip(tmp_path / "many.zip", class_members(n=3))
    with pytest.raises(DataError, match=r"holds 6 files, over the cap of 5 \(max_files\)"):
        load_dataset(z, workspace_root=workspace_root, limits=Limits(max_files=5))


def test_member_larger_than_declared_is_not_written_past_its_declared_size(tmp_path, workspace_root):
    payload = image_bytes(seed=3, size=(64, 64))
    z = write_zip(tmp_path / "lie.zip", {**class_members(n=3), "cat/lie.png": payload})
    raw = bytearray(z.read_bytes())
    # Shrink the declared size of cat/lie.png in the central directory.
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"cat/lie.png"))
    struct.pack_into("<I", raw, cd + 24, 100)
    z.write_bytes(bytes(raw))
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert "cannot be extracted" in reasons(ds)["cat/lie.png"]
        assert all(p.stat().st_size <= len(payload) for p in ds.workspace.iterdir())


def test_decompression_bomb_image_is_refused_by_pixel_cap(tmp_path):
    members = class_members(n=3)
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # a few KB on disk, 81 megapixels
    members["cat/bomb.png"] = buf.getvalue()
    ds = load_dataset(write_tree(tmp_path / "d", members))
    assert "too many pixels" in reasons(ds)["cat/bomb.png"] and "max_pixels=64,000,000" in reasons(ds)["cat/bomb.png"]
    ds = load_dataset(tmp_path / "d", limits=Limits(max_pixels=100))
    assert all("too many pixels" in s.reason for s in ds.report.skipped)


def test_long_and_non_utf8_names(tmp_path, workspace_root):
    long_name = "cat/" + "x" * 300 + ".png"
    members = {**class_members(n=3), long_name: image_bytes(seed=40), "cafX/1.png": image_bytes(seed=41),
               "cafX/2.png": image_bytes(seed=42)}
    z = write_zip(tmp_path / "names.zip", members)
    _patch_name(z, b"cafX/", b"caf\xe9/")  # Latin-1 bytes without the UTF-8 flag
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert "name too long" in reasons(ds)[long_name]
        odd = [c for c in ds.classes if c.startswith("caf")]
        assert len(odd) == 1 and ds.report.counts[odd[0]] == 2
        assert files_outside(tmp_path, [z, workspace_root]) == []


def test_invalid_utf8_name_flagged_as_utf8(tmp_path, workspace_root):
    z = write_zip(tmp_path / "bad.zip", {**class_members(n=3), "caf\u00e9/1.png": image_bytes(seed=1)})
    _patch_name(z, "caf\u00e9".encode(), b"caf\xc3\x28")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_dataset(z, workspace_root=workspace_root)
    assert list(workspace_root.iterdir()) == []


def test_nested_archives_are_reported_not_opened(tmp_path, workspace_root):
    inner = write_zip(tmp_path / "inner.zip", class_members(("x", "y"), n=2)).read_bytes()
    z = write_zip(tmp_path / "outer.zip", {**class_members(n=3), "cat/more.zip": inner})
    with load_dataset(z, workspace_root=workspace_root) as ds:
        assert "archive inside the archive" in reasons(ds)["cat/more.zip"]
        assert ds.classes == ["cat", "dog"]


# ---------------------------------------------------------------- colour modes and formats


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P", "RGBA", "LA", "I;16", "I"])
def test_colour_modes_become_8bit_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I" else "PNG")
    payload = image_bytes(seed=1, fmt=fmt, mode=mode)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(payload)
    img, found_mode, size = read_rgb(path)
    assert img.mode == "RGB" and size == (40, 30)
    assert np.asarray(img).dtype == np.uint8
    assert found_mode == mode, "the report shows the file's own colour mode"


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    p = tmp_path / "a.png"
    rgba.save(p)
    arr = np.asarray(read_rgb(p)[0])
    assert tuple(arr[5, 15]) == (255, 255, 255) and tuple(arr[5, 5]) == (0, 0, 255)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 10, 20))
    p = tmp_path / "t.png"
    img.save(p, transparency=0)
    arr = np.asarray(read_rgb(p)[0])
    assert tuple(arr[5, 15]) == (255, 255, 255) and tuple(arr[5, 5]) == (255, 0, 0)


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr16 = np.full((20, 20), 32768, dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr16).save(p)
    out = np.asarray(read_rgb(p)[0])
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise when displayed
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif, quality=95)
    out, _, size = read_rgb(p)
    assert out.size == (20, 40) and size == (20, 40)
    top = np.asarray(out)[5, 10]
    assert top[0] > 200 and top[1] < 60, "the left (red) half is on top after a 90 degree clockwise turn"


def test_first_frame_of_gif_and_multipage_tiff(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    for ext in ("gif", "tiff"):
        p = tmp_path / f"anim.{ext}"
        frames[0].save(p, save_all=True, append_images=frames[1:])
        arr = np.asarray(read_rgb(p)[0])
        assert arr[10, 10, 0] > 200 and arr[10, 10, 2] < 60


def test_webp_and_heic(tmp_path):
    p = tmp_path / "x.webp"
    p.write_bytes(image_bytes(fmt="WEBP", colour=(10, 200, 10)))
    assert np.asarray(read_rgb(p)[0])[5, 5, 1] > 150
    if data.images.pillow_heif is None:
        pytest.skip("pillow-heif is not installed: HEIC cannot be read")
    try:
        heic = image_bytes(fmt="HEIF", colour=(10, 200, 10))
    except Exception as e:  # an encoder-less libheif build can read but not write
        pytest.skip(f"cannot write a HEIC file to test with here: {e}")
    p = tmp_path / "x.heic"
    p.write_bytes(heic)
    assert np.asarray(read_rgb(p)[0])[5, 5, 1] > 150


def test_truncated_empty_and_too_small(tmp_path):
    jpeg = image_bytes(seed=5, fmt="JPEG", size=(200, 200))
    members = class_members(n=3)
    members.update({"cat/trunc.jpg": jpeg[: len(jpeg) // 2], "cat/empty.jpg": b"",
                    "cat/tiny.png": image_bytes(size=(4, 4))})
    ds = load_dataset(write_tree(tmp_path / "d", members))
    r = reasons(ds)
    assert "corrupt or truncated" in r["cat/trunc.jpg"]
    assert r["cat/empty.jpg"] == "empty file (0 bytes)"
    assert "too small (4x4" in r["cat/tiny.png"]


def test_eps_is_refused_without_running_ghostscript(tmp_path):
    p = tmp_path / "x.eps"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(DataError, match="not an image"):
        read_rgb(p)


# ---------------------------------------------------------------- split


def test_split_is_stratified_and_seeded(tmp_path):
    members = {**class_members(("a",), n=10), **class_members(("b",), n=5, seed0=50),
               **class_members(("c",), n=2, seed0=80)}
    root = write_tree(tmp_path / "d", members)
    ds = load_dataset(root, seed=1)
    val_per_class = {c: sum(ds.items[i].label == c for i in ds.val) for c in ds.classes}
    assert val_per_class == {"a": 2, "b": 1, "c": 1}
    assert set(ds.train).isdisjoint(ds.val) and len(ds.train) + len(ds.val) == 17
    again = load_dataset(root, seed=1)
    assert [again.items[i].name for i in again.val] == [ds.items[i].name for i in ds.val]
    other = [sorted(ds.items[i].name for i in load_dataset(root, seed=s).val) for s in range(2, 8)]
    assert any(o != sorted(ds.items[i].name for i in ds.val) for o in other)


def test_split_does_not_depend_on_upload_order(tmp_path):
    files = write_tree(tmp_path / "up", class_members(("a", "b"), n=10))
    a, b = sorted((files / "a").iterdir()), sorted((files / "b").iterdir())
    one = load_dataset({"a": a, "b": b}, seed=3)
    two = load_dataset({"b": list(reversed(b)), "a": list(reversed(a))}, seed=3)
    assert [one.items[i].name for i in one.val] == [two.items[i].name for i in two.val]


# ---------------------------------------------------------------- decode cache


def test_decode_cache_resizes_and_never_decodes_twice(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "d", {f"a/{i}.jpg": image_bytes(seed=i, size=(120, 90), fmt="JPEG")
                                       for i in range(4)})
    paths = sorted(root.glob("a/*.jpg"))
    cache = DecodeCache(paths, short_side=45).fill()
    assert cache.cached == 4
    t = cache[0]
    assert t.dtype.is_floating_point is False and tuple(t.shape) == (3, 45, 60)
    calls = []
    monkeypatch.setattr(data.cache, "read_rgb",  # what the cache decodes with
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    for _ in range(2):
        for i in range(len(cache)):
            cache[i]
    assert calls == [], "a cached epoch decodes nothing"
    assert cache.pil(1).size == (60, 45)


def test_decode_cache_memory_cap_falls_back_to_disk(tmp_path):
    root = write_tree(tmp_path / "d", {f"a/{i}.png": image_bytes(seed=i, size=(32, 32)) for i in range(5)})
    cache = DecodeCache(sorted(root.glob("a/*.png")), short_side=32, max_bytes=3 * 32 * 32 * 2).fill()
    assert cache.cached == 2 and cache.nbytes <= cache.max_bytes
    assert all(tuple(cache[i].shape) == (3, 32, 32) for i in range(5))


def test_decode_cache_keeps_small_images_small(tmp_path):
    p = write_tree(tmp_path, {"s.png": image_bytes(seed=1, size=(40, 30))}) / "s.png"
    assert tuple(DecodeCache([p], short_side=224).fill()[0].shape) == (3, 30, 40)


# ---------------------------------------------------------------- CLI


def test_cli_data_check(tmp_path, capsys):
    root = write_tree(tmp_path / "d", class_members(n=3))
    assert cli.main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["counts"] == {"cat": 3, "dog": 3}
    assert cli.main(["data", "check", str(root / "cat")]) == 2
    assert "not inside a class folder" in capsys.readouterr().err
    assert cli.main(["data", "check", str(tmp_path / "missing.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_caps_are_configurable(tmp_path, capsys):
    z = write_zip(tmp_path / "d.zip", class_members(n=3))
    assert cli.main(["data", "check", str(z), "--max-files", "2"]) == 2
    assert "(max_files)" in capsys.readouterr().err


def test_export_keeps_names_labels_and_split_and_leaves_skipped_files_out(tmp_path):
    members = class_members(("cat", "dog"), n=6)
    members["cat/broken.jpg"] = b"not an image"
    z = write_zip(tmp_path / "pets.zip", members)
    with load_dataset(z, val_fraction=0.34, seed=3) as ds:
        data.export_dataset(ds, tmp_path / "copy")
        split = {ds.items[i].name: s for s, idx in (("train", ds.train), ("val", ds.val)) for i in idx}
    assert not ds.workspace.exists()  # the copy outlives the upload's temporary files
    with load_dataset(tmp_path / "copy", val_fraction=0.9, seed=99) as copy:  # the recorded split wins
        assert copy.report.ok and copy.report.layout == "labels.csv manifest" and not copy.report.skipped
        assert {copy.items[i].name: s for s, idx in (("train", copy.train), ("val", copy.val))
                for i in idx} == split
        assert "cat/broken.jpg" not in {it.name for it in copy.items}


def test_export_renames_uploads_that_share_a_file_name(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, seed in ((a, 1), (b, 2)):
        d.mkdir()
        (d / "photo.png").write_bytes(image_bytes(seed=seed))
    others = [write_tree(tmp_path / f"o{i}", {"x.png": image_bytes(seed=10 + i)}) / "x.png" for i in range(3)]
    with load_dataset({"cat": [a / "photo.png", b / "photo.png"], "dog": others}) as ds:
        data.export_dataset(ds, tmp_path / "copy")
    with load_dataset(tmp_path / "copy") as copy:
        assert len(copy.items) == 5 and copy.labels(range(5)).count(0) == 2


def test_counts_read_as_english(tmp_path):
    from vit.data import count
    assert [count(1, "image"), count(3, "image"), count(1, "class"), count(2, "class")] == [
        "1 image", "3 images", "1 class", "2 classes"]
    with load_dataset(write_tree(tmp_path / "one", {"only/a.png": image_bytes(seed=1),
                                                    "only/b.png": image_bytes(seed=2)})) as ds:
        assert ds.report.to_text().startswith("Cannot train yet: 2 images in 1 class (class folders)")
