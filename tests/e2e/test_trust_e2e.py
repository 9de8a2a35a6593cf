"""End to end, "can I trust these maps?": ``xaidash compute`` on a generated dataset with object
masks, then the overview's trust sections and the image page's ROAD and localisation in
headless Chromium. ``XAIDASH_TRUST_SHOT=PATH`` also saves the overview's trust sections there
(how docs/trust-overview.png is made)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.support.browser import LiveServer, check_page, css, open_page, wait_for
from tests.support.imagegen import make_imagefolder_with_masks
from tests.support.models import save_tiny_checkpoint
from xaidash.cli import main
from xaidash.store import open_store


def test_trust_end_to_end_in_the_browser(tmp_path: Path, driver: Any) -> None:
    data = make_imagefolder_with_masks(tmp_path / "data", n_train=3, n_val=5, size=32)
    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    store = tmp_path / "store"
    assert main(["compute", "--data", f"imagefolder:{data}", "--checkpoint", str(ckpt), "--store", str(store),
                 "--methods", "cam,gradcam,gradcampp,scorecam", "--scorecam-max-channels", "16",
                 "--sanity-images", "4", "--road-fractions", "0.1,0.5,0.9", "--faithfulness-steps", "4",
                 "--workers", "0", "--projection", "pca", "--twins", "2", "--attribution-images", "0"]) == 0
    with open_store(store) as r:
        run_id = r.latest_run_id()
        assert run_id is not None
        iid = str(r.sql("SELECT image_id FROM localisation ORDER BY image_id LIMIT 1")["image_id"].iloc[0])
    srv = LiveServer(store, tmp_path / "sel")
    try:
        open_page(driver, srv.url + "/", "#overview-trust")
        for sel in ("#overview-sanity-curves .js-plotly-plot", "#overview-road-curves .js-plotly-plot",
                    "#overview-baselines-table", "#overview-localisation-table", "#overview-trust-cost"):
            wait_for(lambda sel=sel: css(driver, sel), sel)
        verdicts = css(driver, "#overview-sanity-verdicts li")
        assert len(verdicts) == 4
        assert all(("passes" in v.text) != ("flagged" in v.text) for v in verdicts)
        assert "Grad-CAM" in css(driver, "#overview-sanity-verdicts")[0].text
        assert len(css(driver, "#overview-localisation-table tbody tr")) == 4
        assert "Beats centre?" in css(driver, "#overview-baselines-table")[0].text
        assert "ROAD" in css(driver, "#overview-trust-cost")[0].text
        check_page(driver, "trust_overview")
        shot = os.environ.get("XAIDASH_TRUST_SHOT")
        if shot:
            driver.execute_script("document.getElementById('overview-trust').scrollIntoView()")
            css(driver, "#overview-trust")[0].screenshot(shot)

        open_page(driver, f"{srv.url}/image?run={run_id}&id={iid}", "#image-trust")
        wait_for(lambda: css(driver, "#image-road-curves .js-plotly-plot"), "the image's ROAD curves")
        assert len(css(driver, "#image-road-table tbody tr")) == 4
        assert len(css(driver, "#image-localisation-table tbody tr")) == 4
        check_page(driver, "trust_image")
    finally:
        srv.close()
