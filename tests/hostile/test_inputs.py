"""Hostile input image URLs, against the real local_worker.py.

The first URL may be on a private or loopback address (it comes from GmAnimato), but a redirect to
another host is followed only to a public address (``inputs.treat_as_public`` makes 127.0.0.2 count as
one here), never to another loopback address (where this box's ComfyUI listens) nor to ``file://``. A
download that trickles is cut at ``inputs.download_timeout``; what arrives must be an image or a video.
"""
from __future__ import annotations

import base64
import secrets
import time
from urllib.parse import urlencode

import pytest

from tests.hostile.conftest import start_local_worker

DOWNLOAD_TIMEOUT = 3.0
HTML_URI = "data:text/html;base64," + base64.b64encode(b"<html><script>alert(1)</script></html>").decode()


def job_with_image(gma, url: str) -> str:
    """A queued i2v job whose one input image (``<videoId>.png``, as its workflow expects) comes from ``url``."""
    vid = "hostile" + secrets.token_hex(8)
    gma.add_job(template="i2v", video_id=vid, input_patch={"images": [{"name": f"{vid}.png", "image": url}]})
    return vid


def redirect(probe, target: str) -> str:
    return f"{probe.url}/redirect?{urlencode({'to': target})}"


@pytest.mark.timeout(120)
def test_input_redirects_trickles_and_non_images_are_refused(gma, comfy, bucket, processes, tmp_path, probes):
    origin, public, private = probes("127.0.0.1"), probes("127.0.0.2"), probes("127.0.0.3")
    to_private = job_with_image(gma, redirect(origin, private.url + "/png"))
    to_public = job_with_image(gma, redirect(origin, public.url + "/png"))
    to_file = job_with_image(gma, redirect(origin, "file:///etc/passwd"))
    trickle = job_with_image(gma, origin.url + "/trickle?every=0.2")
    html = job_with_image(gma, HTML_URI)
    good = gma.add_job(template="i2v")
    worker = start_local_worker(processes, tmp_path, gma, comfy, bucket,
                                inputs={"treat_as_public": ["127.0.0.2"], "download_timeout": DOWNLOAD_TIMEOUT})

    origin.wait_for_hits(1, timeout=60, path="/trickle")
    asked = time.time()                                  # the download began (the probe saw the request)
    gma.wait_final([trickle], timeout=30)
    took = gma.finals(trickle)[0]["t"] - asked           # the sim stamps webhooks with time.time() too
    assert DOWNLOAD_TIMEOUT - 0.5 <= took <= DOWNLOAD_TIMEOUT + 2.5, took   # cut at the limit, not at 10 MB
    gma.wait_final([good], timeout=60)

    gma.one_failed(to_private, "not public (127.0.0.3)", "inputs.redirect_hosts")
    assert private.hits == []
    gma.one_completed(to_public)
    assert [h.path for h in public.hits] == ["/png"]
    gma.one_failed(to_file, "file:///etc/passwd", "not http(s)")
    gma.one_failed(trickle, f"within {DOWNLOAD_TIMEOUT:g} s (inputs.download_timeout)")
    gma.one_failed(html, "not a PNG, JPEG, WebP, GIF, MP4 or WebM", "HTML")
    gma.one_completed(good)
    assert not comfy.prompts_of(to_private) and not comfy.prompts_of(trickle) and not comfy.prompts_of(html)

    worker.assert_alive()
    assert gma.stray() == []
    bucket.assert_keys_under([f"local-{to_public}", f"local-{good}"])
    worker.assert_clean_log()
    worker.stop()
