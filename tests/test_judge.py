"""The judging page (nst.judge) on a real tiny sweep: its server refuses every path out of the sweep
folder, bad folders are one-line errors, the pair choice balances the settings and repeats about one
pair in ten, Bradley–Terry recovers a known order, and, in a real headless Chromium, clicks and arrow
keys become the expected lines of judgements.jsonl, a reload resumes, and two judges at once are both
recorded."""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from conftest import nst_env, run_in
from nst.judging import judging_html, scores, store
from nst.judging.pairs import Chooser, setting_pair
from nst.judging.results import Result, load
from nst.judging.server import App, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")
# the trial folders' names end with their override; the labels write numbers alike across sweeps
LABELS = {"style_weight=100.0": "style_weight=100", "style_weight=10000.0": "style_weight=10000",
          "style_weight=1000000.0": "style_weight=1e+06"}


@pytest.fixture(scope="module")
def made_sweep(tmp_path_factory) -> Path:
    """One real three-trial sweep (one content/style pair, three style weights), never changed: each
    test judges a copy of it."""
    cwd = tmp_path_factory.mktemp("judge_sweep")
    r = run_in(cwd, "-m", "style_weight=1e2,1e4,1e6", "size=32", "steps=2", "logger=none", f"hydra.sweep.dir={cwd / 'sweep'}")
    assert r.returncode == 0, r.stderr
    return cwd / "sweep"


@pytest.fixture
def sweep(made_sweep, tmp_path) -> Path:
    return Path(shutil.copytree(made_sweep, tmp_path / "sweep"))


@pytest.fixture
def server(sweep):
    app = App(load([sweep]), seed=0)
    srv = serve(app)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield app, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)  # sent as written: no client-side normalisation of .. or %2e
    r = c.getresponse()
    return r.status, r.read()


# ------------------------------------------------------------------------------- server and input


def test_only_images_inside_the_sweep_folder_are_served(server, sweep, tmp_path):
    _, port = server
    trial = next(d.name for d in sweep.iterdir() if d.name.startswith("0_"))
    status, body = get(port, f"/files/0/{trial}/final.png")
    assert status == 200 and body == (sweep / trial / "final.png").read_bytes()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for the page")
    (sweep / "link.png").symlink_to(secret)  # a link inside the folder that points out of it
    for path in ("/files/0/../secret.png", "/files/0/%2e%2e/secret.png", "/files/0/..%2fsecret.png",
                 f"/files/0/{trial}/../../secret.png", f"/files/0/{secret}", f"/files/0//{secret}", "/files/0/link.png",
                 "/files/1/final.png", "/files/-1/x.png", f"/files/0/{trial}/summary.json", "/static/../judge.py",
                 "/static/%2e%2e/server.py", f"/files/0/{trial}/final.png%00.png", "/input/99", "/input/-1",
                 "/input/../../etc/passwd"):
        status, body = get(port, path)
        assert status == 404, path
        assert b"PNG not for the page" not in body
    # the photograph and the painting the trials were made from, by index
    status, body = get(port, "/input/0")
    assert status == 200 and body[:3] == b"\xff\xd8\xff"  # the bundled JPEG


def test_sweeps_of_the_same_pair_are_judged_together(sweep, tmp_path):
    other = Path(shutil.copytree(sweep, tmp_path / "again"))  # the same three settings run again
    sweeps = load([sweep, other])
    assert len(sweeps.results) == 6 and sorted({r.setting for r in sweeps.results}) == sorted(LABELS.values())
    app = App(sweeps, seed=0)
    srv = serve(app)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        mine = next(r for r in sweeps.results if r.folder == 0)
        theirs = next(r for r in sweeps.results if r.folder == 1 and r.setting != mine.setting)
        assert theirs.ref.startswith("../again/")
        status, body = get(port, app.file_url(theirs.path / "final.png"))
        assert status == 200 and body == (theirs.path / "final.png").read_bytes()
        assert app.choose({"judge": "ann", "left": theirs.ref, "right": mine.ref, "winner": "left"})["judged"] == 1
    finally:
        srv.shutdown()
        srv.server_close()
    (line,) = store.read(sweep / "judgements.jsonl")  # the first folder holds the judgements
    assert (line["left"], line["left_setting"], line["right_setting"]) == (theirs.ref, theirs.setting, mine.setting)
    assert not (other / "judgements.jsonl").exists()


def test_a_choice_that_names_no_result_of_the_sweep_is_refused(server, sweep):
    _, port = server
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    offer = json.loads(get(port, "/api/next?judge=ann")[1])
    bad = [{"judge": "ann", "left": "../secret", "right": offer["right"]["id"], "winner": "left"},
           {"judge": "ann", "left": offer["left"]["id"], "right": offer["left"]["id"], "winner": "left"},
           {"judge": "", "left": offer["left"]["id"], "right": offer["right"]["id"], "winner": "left"},
           {"judge": "ann", "left": offer["left"]["id"], "right": offer["right"]["id"], "winner": "both"}]
    for body in bad:
        c.request("POST", "/api/choice", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 400 and "error" in json.loads(r.read())
    assert not (sweep / "judgements.jsonl").exists()


def test_bad_folders_are_one_line_errors(sweep, tmp_path, capsys):
    from nst.judge import main

    (tmp_path / "empty").mkdir()
    for folder, what in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "not a sweep folder"),
                         (sweep / next(d.name for d in sweep.iterdir() if d.name.startswith("0_")), "not a sweep folder")):
        assert main([str(folder), "--no-browser"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(folder) in err and what in err, err
    # one completed trial left of the pair: nothing to compare (the others made unfinished)
    for d in sweep.iterdir():
        if d.name[:2] in ("1_", "2_"):
            (d / "summary.json").unlink()
    assert main([str(sweep), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "no content/style pair has two completed trials" in err and err.count("\n") == 1
    assert not (sweep / "judgements.jsonl").exists()
    # the `nst` command hands `judge` to nst.judge
    r = subprocess.run([sys.executable, "-m", "nst", "judge", "--scores", str(sweep)], check=False, env=nst_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("nst judge: error: ") and "no judgements yet" in r.stderr


# ------------------------------------------------------------------------------------ pair choice


def fake_results(n_pairs=2, settings=("a", "b", "c", "d"), seed=0) -> list[Result]:
    rng = random.Random(seed)
    return [Result(ref=f"{p}-{s}", folder=0, path=Path(f"/x/{p}-{s}"), pair=(f"c{p}", "s"), setting=s,
                   closeness=rng.uniform(0.05, 0.3), content_file=None, style_files=()) for p in range(n_pairs) for s in settings]


def test_pairs_balance_the_settings_prefer_close_results_and_repeat_about_one_in_ten():
    results = fake_results()
    chooser = Chooser(results, random.Random(1))
    history, by_ref = [], {r.ref: r for r in results}
    for i in range(240):
        offer = chooser.next("ann" if i % 2 else "bob", history)
        assert offer.left.pair == offer.right.pair and offer.left.setting != offer.right.setting
        history.append({"judge": "ann" if i % 2 else "bob", "left": offer.left.ref, "right": offer.right.ref,
                        "winner": "left", "repeat": offer.repeat})
    # every judgement counts towards the balance, repeats too: the pairs of settings stay within one or two
    per_setting_pair = Counter(setting_pair(by_ref[h["left"]].setting, by_ref[h["right"]].setting) for h in history)
    assert len(per_setting_pair) == 6 and max(per_setting_pair.values()) - min(per_setting_pair.values()) <= 2
    repeats = sum(h["repeat"] for h in history)
    assert 0.04 * len(history) <= repeats <= 0.18 * len(history)
    for judge in ("ann", "bob"):  # a repeat shows a pair the same judge has judged before
        seen = set()
        for h in (h for h in history if h["judge"] == judge):
            key = frozenset((h["left"], h["right"]))
            assert (key in seen) >= h["repeat"]
            seen.add(key)


def test_pairs_of_results_equally_close_to_the_photograph_come_first():
    results = fake_results(n_pairs=10, seed=2)
    chooser = Chooser(results, random.Random(2))
    history = []
    for _ in range(30):  # half the 60 candidates: each is shown once before any twice, the closest first
        offer = chooser.next("ann", history)
        history.append({"judge": "ann", "left": offer.left.ref, "right": offer.right.ref, "winner": "left"})
    gaps = [abs(a.closeness - b.closeness) for a, b in chooser.candidates]
    middle = float(np.median(gaps))
    by_ref = {r.ref: r for r in results}
    drawn = [abs(by_ref[h["left"]].closeness - by_ref[h["right"]].closeness) for h in history]
    assert sum(g < middle for g in drawn) > 1.5 * sum(g >= middle for g in drawn)


# ------------------------------------------------------------------------------------------ scores


def simulated(strength: dict[str, float], n: int, seed: int, tie_band: float = 0.1) -> list[dict]:
    """Choices drawn from the Bradley–Terry model with these log-strengths (a 'can't tell' when the
    draw falls within tie_band of the even odds), two judges, some pairs repeated."""
    rng = np.random.default_rng(seed)
    names = list(strength)
    out = []
    for k in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        p = 1 / (1 + np.exp(strength[b] - strength[a]))
        u = rng.random()
        winner = "none" if abs(u - p) < tie_band / 2 else ("left" if u < p else "right")
        out.append({"judge": f"j{k % 2}", "left": f"t-{a}-{k % 7}", "right": f"t-{b}-{k % 7}", "left_setting": a,
                    "right_setting": b, "winner": winner, "repeat": False})
    return out


def test_bradley_terry_recovers_a_known_order():
    truth = {"w1": -1.5, "w2": -0.6, "w3": 0.0, "w4": 0.7, "w5": 1.4}
    records = simulated(truth, 800, seed=3)
    sc = scores.scores(records, bootstrap=200)
    assert [sc.settings[i] for i in sc.order()] == ["w5", "w4", "w3", "w2", "w1"]
    true = np.array([truth[s] for s in sc.settings])
    true -= true.mean()
    assert np.all(sc.low < sc.score) and np.all(sc.score < sc.high)
    assert np.all(np.abs(sc.score - true) < 0.35), (sc.score, true)
    assert sum((sc.low <= true) & (true <= sc.high)) >= 4  # 95 % intervals cover the truth


def test_win_rates_agreement_and_the_csv(sweep):
    records = [  # two judges on the same two results, one of them twice
        {"judge": "ann", "left": "t1", "right": "t2", "left_setting": "a", "right_setting": "b", "winner": "left"},
        {"judge": "bob", "left": "t2", "right": "t1", "left_setting": "b", "right_setting": "a", "winner": "right"},
        {"judge": "ann", "left": "t2", "right": "t1", "left_setting": "b", "right_setting": "a", "winner": "left"},
        {"judge": "bob", "left": "t3", "right": "t4", "left_setting": "a", "right_setting": "b", "winner": "none"},
    ]
    sc = scores.scores(records, bootstrap=50)
    # between judges: ann#1 vs bob (both t1: agree), bob vs ann#2 (t1 vs t2: disagree); ann with herself: disagree
    assert sc.between == (1, 2) and sc.repeats == (0, 1)
    a, b = sc.settings.index("a"), sc.settings.index("b")
    assert (sc.wins[a, b], sc.wins[b, a], sc.ties[a, b]) == (2, 1, 1)
    rows = list(__import__("csv").DictReader(scores.csv_text(sc).splitlines()))
    pair = next(r for r in rows if r["kind"] == "pair")
    assert (pair["setting"], pair["other"], pair["won"], pair["lost"], pair["tied"]) == ("a", "b", "2", "1", "1")
    assert float(pair["win_rate"]) == pytest.approx(2.5 / 4)
    assert {r["setting"]: (r["agreeing"], r["compared"]) for r in rows if r["kind"] == "agreement"} == \
        {"between_judges": ("1", "2"), "repeats": ("0", "1")}
    # the report's fragment: empty without judgements, the scores with them
    assert judging_html(sweep) == ""
    for rec in records:
        store.append(sweep / "judgements.jsonl", rec)
    fragment = judging_html(sweep)
    assert 'id="judging"' in fragment and "4 blind side-by-side judgement(s) by 2 judge(s)" in fragment
    # and the sweep's report, rebuilt from the folder, shows them
    done = subprocess.run([sys.executable, "-m", "nst.report", str(sweep)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (sweep / "report.html").read_text()
    assert 'id="judging"' in page and page.index('id="judging"') < page.index("<h2>Results</h2>")


def test_a_line_cut_by_a_kill_loses_only_itself(sweep):
    path = sweep / "judgements.jsonl"
    rec = {"judge": "ann", "left": "t1", "right": "t2", "left_setting": "a", "right_setting": "b", "winner": "left"}
    store.append(path, rec)
    with open(path, "ab") as f:
        f.write(json.dumps(rec).encode()[:20])  # a write cut short
    store.append(path, {**rec, "winner": "right"})
    warnings = []
    assert [r["winner"] for r in store.read(path, warnings.append)] == ["left", "right"]
    assert len(warnings) == 1 and "line 2" in warnings[0]


# ---------------------------------------------------------------------------------------- browser


@pytest.fixture
def judge_server(sweep, tmp_path):
    """`python -m nst.judge <sweep> --no-browser` in a subprocess: (its URL, the sweep)."""
    p = subprocess.Popen([sys.executable, "-m", "nst.judge", str(sweep), "--no-browser", "--seed", "0"],
                         env=nst_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in p.stdout:
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, p.stderr.read()
        yield url, sweep
    finally:
        p.terminate()
        p.wait(timeout=30)


def browser(tmp_path: Path, name: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / ('profile-' + name)}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def ready(driver) -> dict:
    """Waits for the page to show a pair; the pair shown: {side: trial folder}."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "ready")
    srcs = driver.execute_script("return [document.getElementById('left').getAttribute('src'), "
                                 "document.getElementById('right').getAttribute('src')]")
    loaded = driver.execute_script(
        "return Array.from(document.images).every(i => i.hidden || (i.complete && i.naturalWidth > 0))")
    assert loaded, "an image did not load"
    return {side: unquote(src).split("/")[3] for side, src in zip(("left", "right"), srcs, strict=True)}


def sign_in(driver, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    field = driver.find_element(By.ID, "name")
    assert field.is_displayed()  # asked once, on the first visit
    field.send_keys(name)
    driver.find_element(By.CSS_SELECTOR, "#name-form button").click()


def act(driver, how: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    if how.startswith("key:"):
        key = {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT, "none": Keys.ARROW_DOWN}[how[4:]]
        ActionChains(driver).send_keys(key).perform()
    else:
        driver.find_element(By.ID, {"left": "pick-left", "right": "pick-right", "none": "pick-none"}[how[6:]]).click()


def setting_of(sweep: Path, trial: str) -> str:
    # the label the page records for a trial, from the style weight its own summary says it ran with
    weight = json.loads((sweep / trial / "summary.json").read_text())["config"]["style_weight"]
    return next(label for key, label in LABELS.items() if float(key.split("=")[1]) == float(weight))


@needs_browser
def test_clicks_and_keys_become_the_expected_lines_and_a_reload_resumes(judge_server, tmp_path):
    from selenium.webdriver.common.by import By

    url, sweep = judge_server
    driver = browser(tmp_path, "ann")
    try:
        sign_in(driver, url, "ann")
        expected = []
        for how in ("click:left", "key:right", "key:none", "click:right", "key:left", "click:none"):
            shown = ready(driver)
            act(driver, how)
            expected.append((shown["left"], shown["right"], how.split(":")[1]))
        ready(driver)
        driver.refresh()  # resumes: the name kept, the count from the file, nothing lost
        shown = ready(driver)
        assert not driver.find_element(By.ID, "name-form").is_displayed()
        assert driver.find_element(By.ID, "who").text == "judge: ann"
        assert driver.find_element(By.ID, "count").text == "6 judged"
        act(driver, "key:left")
        expected.append((shown["left"], shown["right"], "left"))
        ready(driver)
        assert driver.find_element(By.ID, "count").text == "7 judged"
        # nothing on the page says which settings made which picture
        assert "style_weight" not in driver.page_source.replace(url, "").split("<body")[1].split("/files/")[0]
    finally:
        driver.quit()
    lines = [json.loads(x) for x in (sweep / "judgements.jsonl").read_text().splitlines()]
    assert [(r["left"], r["right"], r["winner"]) for r in lines] == expected
    for r in lines:
        assert r["judge"] == "ann" and r["content"] == "tubingen" and r["style"] == "starry_night"
        assert r["left_setting"] == setting_of(sweep, r["left"]) and r["right_setting"] == setting_of(sweep, r["right"])
        assert r["left"] != r["right"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r["time"])
    # the three pairs of settings are each shown (the least-seen pair of settings comes first)
    firsts = {frozenset((setting_of(sweep, a), setting_of(sweep, b))) for a, b, _ in expected[:3]}
    assert len(firsts) == 3
    r = run_in(tmp_path, "--scores", str(sweep), module="nst.judge", timeout=120)
    assert r.returncode == 0 and "7 judgement(s) by 1 judge(s): ann" in r.stdout
    assert (sweep / "judgements.csv").read_text().startswith("kind,setting,other,score")


@needs_browser
def test_two_judges_at_once_are_both_recorded(judge_server, tmp_path):
    url, sweep = judge_server
    ann, bob = browser(tmp_path, "ann"), browser(tmp_path, "bob")
    try:
        sign_in(ann, url, "ann")
        sign_in(bob, url, "bob")
        shown = {"ann": [], "bob": []}
        for _ in range(3):
            for name, d, how in (("ann", ann, "key:left"), ("bob", bob, "click:right")):
                s = ready(d)
                act(d, how)
                shown[name].append((s["left"], s["right"]))
        ready(ann), ready(bob)
    finally:
        ann.quit()
        bob.quit()
    lines = [json.loads(x) for x in (sweep / "judgements.jsonl").read_text().splitlines()]
    assert [(r["left"], r["right"]) for r in lines if r["judge"] == "ann"] == shown["ann"]
    assert [(r["left"], r["right"]) for r in lines if r["judge"] == "bob"] == shown["bob"]
    assert [r["winner"] for r in lines if r["judge"] == "ann"] == ["left"] * 3
    assert [r["winner"] for r in lines if r["judge"] == "bob"] == ["right"] * 3


def test_runs_that_used_copies_of_the_same_images_are_judged_as_one_pair(sweep, tmp_path):
    # as two separate `benchmarks/quality.py --set` runs, each with its own copies of the photographs
    first = load([sweep]).results[0]
    copies = tmp_path / "copies"
    copies.mkdir()
    content = Path(shutil.copy(first.content_file, copies / "photo.png"))
    styles = [str(shutil.copy(f, copies / f"painting{i}{f.suffix}")) for i, f in enumerate(first.style_files)]
    other = Path(shutil.copytree(sweep, tmp_path / "elsewhere"))
    for path in other.glob("*/summary.json"):
        data = json.loads(path.read_text())
        for recorded in (data["settings"], data["config"]):
            recorded["content"] = str(content)
            recorded["style"] = styles if isinstance(recorded["style"], list) else styles[0]
        path.write_text(json.dumps(data))
    sweeps = load([sweep, other])
    assert len(sweeps.results) == 6 and len({r.pair for r in sweeps.results}) == 1
    assert {r.pair for r in sweeps.results} == {first.pair}  # named as first seen
    candidates = Chooser(sweeps.results, random.Random(0)).candidates
    across = [(a, b) for a, b in candidates if a.folder != b.folder]
    assert len(candidates) == 15 - 3 and len(across) == 6  # the same setting is never judged against itself
    # another photograph is another pair
    from PIL import Image

    with Image.open(content) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(content)
    assert len({r.pair for r in load([sweep, other]).results}) == 2
