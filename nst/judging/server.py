"""The judging page's local server (the standard library's http.server, on 127.0.0.1 only).

Routes: `/` and `/static/<file>` the page; `/api/next?judge=NAME` the next two results (their settings
are not sent); `POST /api/choice` a verdict, appended before the answer; `/files/<n>/<path>` an image
inside the n-th sweep folder (nothing outside it, whatever the path says); `/input/<n>` the n-th
content or style image the trials were made from (by index, so no path from the page reaches the disk).
"""

from __future__ import annotations

import json
import mimetypes
import random
import threading
import time
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from nst.judging import store
from nst.judging.pairs import Chooser
from nst.judging.results import SweepSet

STATIC = {"index.html": "text/html", "judge.js": "text/javascript", "judge.css": "text/css"}
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
MAX_BODY = 64 * 1024
MAX_NAME = 80


class App:
    def __init__(self, sweeps: SweepSet, seed: int | None = None):
        self.sweeps = sweeps
        self.chooser = Chooser(sweeps.results, random.Random(seed))
        self.lock = threading.Lock()
        self._history: list[dict] = []
        self._size = -1

    def history(self) -> list[dict]:
        """Every judgement in the file, re-read when it has grown (another server may write to it too)."""
        path = self.sweeps.judgements
        size = path.stat().st_size if path.exists() else 0
        if size != self._size:
            self._history, self._size = store.read(path), size
        return self._history

    def file_url(self, path: Path) -> str:
        folder = self.sweeps.folders[next(i for i, f in enumerate(self.sweeps.folders) if path.is_relative_to(f))]
        return f"/files/{self.sweeps.folders.index(folder)}/{quote(str(path.relative_to(folder)))}"

    def next(self, judge: str) -> dict:
        with self.lock:
            history = self.history()
            offer = self.chooser.next(judge, history)
            mine = sum(h["judge"] == judge for h in history)
        a = offer.left

        def side(r) -> dict:
            return {"id": r.ref, "src": self.file_url(r.path / "final.png")}

        return {"left": side(offer.left), "right": side(offer.right), "repeat": offer.repeat, "judged": mine,
                "content": None if a.content_file is None else f"/input/{self.sweeps.input_index(a.content_file)}",
                "styles": [f"/input/{self.sweeps.input_index(f)}" for f in a.style_files]}

    def choose(self, body: dict) -> dict:
        judge = body.get("judge")
        if not isinstance(judge, str) or not judge.strip() or len(judge) > MAX_NAME:
            raise ValueError(f"judge: a name of 1 to {MAX_NAME} characters")
        left, right = (self.sweeps.by_ref.get(v) if isinstance(v := body.get(k), str) else None for k in ("left", "right"))
        if left is None or right is None or left.pair != right.pair or left.setting == right.setting:
            raise ValueError("left, right: two results of this sweep's same content and style, with different settings")
        if body.get("winner") not in store.WINNERS:
            raise ValueError(f"winner: one of {', '.join(store.WINNERS)}")
        now = time.time()
        record = {"judge": judge.strip(), "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                  "unix": round(now, 3), "content": left.pair[0], "style": left.pair[1],
                  "left": left.ref, "right": right.ref, "left_setting": left.setting, "right_setting": right.setting,
                  "winner": body["winner"], "repeat": bool(body.get("repeat")),
                  "seconds": body["seconds"] if isinstance(body.get("seconds"), (int, float)) else None}
        with self.lock:
            store.append(self.sweeps.judgements, record)
            mine = sum(h["judge"] == record["judge"] for h in self.history())
        return {"recorded": True, "judged": mine}

    def served_file(self, folder: str, rel: str) -> Path | None:
        """The file under the folder, or None: a path that leaves the folder (.., an absolute path, a
        link pointing out) or that is not an image is not served."""
        if not folder.isdigit() or int(folder) >= len(self.sweeps.folders):
            return None
        root = self.sweeps.folders[int(folder)]
        try:
            path = (root / rel).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the path
            return None
        if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in IMAGES:
            return None
        return path


def handler(app: App):
    class Handler(BaseHTTPRequestHandler):
        server_version = "nst-judge"

        def log_message(self, format, *args):
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def do_GET(self):
            url = urlsplit(self.path)
            path = unquote(url.path)
            if path in ("/", "/index.html"):
                path = "/static/index.html"
            if path.startswith("/static/") and path[8:] in STATIC:
                name = path[8:]
                body = resources.files("nst.judging").joinpath("page", name).read_bytes()
                return self._send(200, body, STATIC[name] + "; charset=utf-8")
            if path == "/api/next":
                judge = parse_qs(url.query).get("judge", [""])[0].strip()
                if not judge:
                    return self._error(400, "judge: a name is needed")
                return self._json(200, app.next(judge))
            parts = path.split("/", 3)
            if len(parts) == 4 and parts[1] == "files":
                file = app.served_file(parts[2], parts[3])
                if file is not None:
                    return self._send(200, file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream")
            if len(parts) == 3 and parts[1] == "input" and parts[2].isdigit() and int(parts[2]) < len(app.sweeps.inputs):
                file = app.sweeps.inputs[int(parts[2])]
                return self._send(200, file.read_bytes(), mimetypes.guess_type(file.name)[0] or "image/jpeg")
            self._error(404, "not found")

        def do_POST(self):
            if urlsplit(self.path).path != "/api/choice":
                return self._error(404, "not found")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length else 400, "a JSON body is needed")
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    return self._error(400, "a JSON object is needed")
                return self._json(200, app.choose(body))
            except ValueError as e:
                return self._error(400, str(e).splitlines()[0])
            except OSError as e:  # not recorded (a full disk): the page says so and keeps the choice on screen
                return self._error(500, f"{app.sweeps.judgements}: not written ({e.strerror or e})")

    return Handler


def serve(app: App, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(app))
    server.daemon_threads = True
    return server
