"""Output collection across the shapes ComfyUI and its node packs use."""
from __future__ import annotations

from handler.outputs import collect_outputs, describe_missing_video, refs_from_ui

VHS = {"gifs": [{"filename": "Wan22_00001.mp4", "subfolder": "", "type": "output",
                 "format": "video/h264-mp4", "frame_rate": 18.0, "workflow": "Wan22_00001.png",
                 "fullpath": "/out/Wan22_00001.mp4"}]}
SAVE_VIDEO = {"images": [{"filename": "cap_video_00001_.mp4", "subfolder": "video", "type": "output"}],
              "animated": [True]}
PREVIEW = {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}]}
PNG = {"images": [{"filename": "still_00001_.png", "subfolder": "", "type": "output"}]}


def test_vhs_gifs_key_is_found():
    refs = refs_from_ui("16", VHS)
    assert [(r.node_id, r.filename, r.is_video) for r in refs] == [("16", "Wan22_00001.mp4", True)]


def test_save_video_under_images_and_temp_skipped():
    refs = collect_outputs({"9": SAVE_VIDEO, "3": PREVIEW}, None)
    assert [(r.filename, r.subfolder) for r in refs] == [("cap_video_00001_.mp4", "video")]


def test_video_first_and_history_deduplicated():
    refs = collect_outputs({"5": PNG}, {"5": PNG, "16": VHS, "7": {"videos": [{"filename": "a.webm"}]}})
    assert [r.filename for r in refs] == ["Wan22_00001.mp4", "a.webm", "still_00001_.png"]


def test_other_keys_are_tolerated():
    assert refs_from_ui("1", {"text": ["hello"], "files": [{"filename": "x.bin"}], "audio": "nope"}) \
        [0].filename == "x.bin"
    assert refs_from_ui("1", None) == []


def test_uppercase_extension_is_delivered_lowercase():
    ref = refs_from_ui("1", {"videos": [{"filename": "CLIP.MP4", "type": "output"}]})[0]
    assert ref.is_video and ref.delivery_name == "CLIP.mp4"


def test_missing_video_messages():
    assert "without producing any output" in describe_missing_video([])
    gif = refs_from_ui("1", {"gifs": [{"filename": "a.gif"}]})
    assert "accepts only .mp4 or .webm" in describe_missing_video(gif)
    assert "only: still_00001_.png" in describe_missing_video(refs_from_ui("1", PNG))


def test_outputs_named_by_the_frames_survive_a_comfyui_gone_after_the_prompt():
    from types import SimpleNamespace

    import pytest

    from handler import watch as w
    from handler.errors import ComfyUnavailable
    from handler.run import confirm_outputs

    def history(prompt_id):
        raise ComfyUnavailable("ComfyUI at http://127.0.0.1:1 went away")   # the next prompt crashed it

    deps = SimpleNamespace(comfy=SimpleNamespace(history=history))
    watch = w.start_watch("p", {"16": {"class_type": "VHS_VideoCombine"}}, {})
    named = w.apply_event(watch, w.Event("executed", {"prompt_id": "p", "node": "16", "output": {
        "gifs": [{"filename": "Wan22_00001.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]}}))
    assert [ref.filename for ref in confirm_outputs(named, deps)] == ["Wan22_00001.mp4"]
    with pytest.raises(ComfyUnavailable):                 # nothing named: /history was needed
        confirm_outputs(watch, deps)
