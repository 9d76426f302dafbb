"""How live the Adapt page feels in a real browser: Step latency and Run's animation rate, one session.

    python scripts/bench/live_bench.py [--clicks 20]

Starts `streamlit run app.py`, opens it in headless Chromium (1400x1000) and, with the character model on
the built-in 5-way 1-shot Omniglot example (what Home loads), times in the page: each Step from the click to
the frame whose curve chart shows the new step (median of --clicks; clicked once the page has settled after the
last one, as a person looks before clicking again; `rapid_` clicks again as soon as the chart shows a step, so
the previous redraw's tail is still running), and Run 5 from the click to the frame showing its fifth step
(steps per second, median of 4 runs); the first Step after opening the page; Compare from the click to its
chart; and the Features page from the nav click to both maps drawn (t-SNE, a fresh server's first map).
Then the same with the photo model on an
ImageNet-18 5-way 1-shot example when the data root has it (its features are computed when the page opens,
so its Steps are on cached features). Prints one JSON line. Needs Chromium and playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time

from load_test import CLICK_STEP, POINTS, go, idle, lab_server

CLICK_RUN = f"""async () => {{
  const before = {POINTS};
  const button = [...document.querySelectorAll('button')].find(b => /Run \\d+$/.test(b.innerText.trim()));
  const steps = Number(button.innerText.trim().split(' ').pop());
  const started = performance.now();
  button.click();
  while ({POINTS} < before + steps + (before === 0 ? 1 : 0)) await new Promise(r => requestAnimationFrame(r));
  return steps / ((performance.now() - started) / 1000);
}}"""


COMPARED = """[...document.querySelectorAll('.js-plotly-plot')].some(p => (p.data ?? []).some(
  t => /^ProtoNet/.test(t.name ?? '')))"""  # the comparison's chart (ProtoNet is one of its lines for every model)
MAPS = """[...document.querySelectorAll('.js-plotly-plot')].filter(p => /(Before|After) adaptation/.test(
  p.layout?.title?.text ?? '')).length"""


async def until(page, started: float, condition: str) -> float:
    """Seconds from `started` (time.perf_counter) to the first frame where the JavaScript `condition` holds."""
    await page.wait_for_function(condition, polling="raf")
    return time.perf_counter() - started


async def measure(page, clicks: int) -> dict:
    await go(page, "Adapt step by step")
    await page.get_by_role("button", name="Step").first.wait_for()
    settled = []  # as a person clicks: after looking at the last step (the page has finished its rerun)
    for _ in range(clicks):
        settled.append(await page.evaluate(CLICK_STEP))
        await idle(page)
    rapid = [await page.evaluate(CLICK_STEP) for _ in range(clicks)]  # each click as soon as the chart shows a step
    await page.get_by_role("button", name="Reset").first.click()
    await idle(page)
    rates = []
    for _ in range(4):
        rates.append(await page.evaluate(CLICK_RUN))
        await idle(page)
    started = time.perf_counter()
    await page.get_by_role("button", name="Compare (").first.click()  # every starting point, Run's steps each
    compare = await until(page, started, COMPARED)
    await idle(page)
    started = time.perf_counter()
    await page.locator('[data-testid="stSidebarNav"] a', has_text="Features").first.click()
    first_map = await until(page, started, f"{MAPS} >= 2")  # before and after: one projection of both
    await idle(page)
    return {
        "first_step_ms": round(1000 * settled[0]),
        "step_median_ms": round(1000 * statistics.median(settled)),
        "step_max_ms": round(1000 * max(settled)),
        "rapid_step_median_ms": round(1000 * statistics.median(rapid)),
        "run_steps_per_s": round(statistics.median(rates), 1),
        "compare_s": round(compare, 2),
        "features_maps_s": round(first_map, 2),
    }


async def bench(url: str, chromium: str, clicks: int, photos_too: bool) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
        page.set_default_timeout(180_000)
        await page.goto(url)
        await page.get_by_text("Few-shot learning lab").first.wait_for()
        await idle(page)
        result = {"characters": await measure(page, clicks)}
        if not photos_too:
            return result
        await page.get_by_text("Photos (EfficientNet-Lite2", exact=False).first.click()
        await idle(page)
        await go(page, "Build a task")
        await page.get_by_text("Start from an example").first.click()
        photos = page.get_by_role("button", name="ImageNet photos")
        if await photos.count():
            await photos.click()
            await idle(page)
            result["photos"] = await measure(page, clicks)
        else:
            result["photos"] = "skipped: no ImageNet-18 under the data root (METACORE_DATA_ROOT)"
        await browser.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20, help="Step clicks to time per model")
    parser.add_argument("--characters-only", action="store_true", help="skip the photo model")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    with lab_server() as (url, _):
        result = asyncio.run(bench(url, chromium, args.clicks, not args.characters_only))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
