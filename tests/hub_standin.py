"""A local stand-in for the Hugging Face Hub's HTTP API, just the endpoints `huggingface_hub.HfApi` calls for
repo_info, create_repo, create_branch, create_commit (validate-yaml, preupload, commit) - so tests drive the
real client end to end with no network.

Modelled on huggingface_hub 2.4's requests (hf_api.py, _commit_api.py): the preupload answer puts every file in
"regular" mode, so the file contents travel base64-encoded inside the ndjson commit body (no LFS / Xet transfer;
that path is not exercised here). Errors carry the Hub's `X-Error-Code` headers so the client raises its own
typed errors (RepositoryNotFoundError ...).

    with HubStandIn(token="hf_test") as hub:
        HfApi(endpoint=hub.url, token="hf_test").create_repo("me/x", private=True)
        hub.repos[("model", "me/x")]["private"]  # True
        hub.log  # every request: method, path, query, headers (lower-case names), body, json
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

_REPO = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("GET", re.compile(rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/{_REPO}/branch/(?P<rev>[^/]+)$"), "branch"),
    ("POST", re.compile(rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
]


class HubStandIn:
    def __init__(self, token: str | None = None):
        self.token = token  # when set, any other Authorization is answered 401 like the Hub
        self.repos: dict[tuple[str, str], dict] = {}  # (model|dataset, id) -> {private, branches: {name: {sha, files}}}
        self.log: list[dict] = []
        self.commits: list[dict] = []  # every commit received: repo, revision, header, operations
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------------------------ test helpers
    def add_repo(self, kind: str, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        self.repos[(kind, repo_id)] = {"private": private, "branches": {"main": {"sha": self._sha(), "files": dict(files)}}}

    def files(self, kind: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[(kind, repo_id)]["branches"][revision]["files"]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubStandIn":
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stand_in._handle(self, "GET")

            def do_POST(self):
                stand_in._handle(self, "POST")

            def do_HEAD(self):
                stand_in._handle(self, "HEAD")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---------------------------------------------------------------------------------------- serving
    def _sha(self) -> str:
        return hashlib.sha1(str(next(self._ids)).encode()).hexdigest()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        entry = {"method": method, "path": url.path, "query": parse_qs(url.query), "headers": {k.lower(): v for k, v in h.headers.items()},
                 "body": raw}
        try:
            entry["json"] = json.loads(raw) if raw and "ndjson" not in (h.headers.get("Content-Type") or "") else None
        except ValueError:
            entry["json"] = None
        with self._lock:
            self.log.append(entry)
            if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
                return self._send(h, 401, {"error": "Invalid credentials in Authorization header"},
                                  {"X-Error-Message": "Invalid credentials in Authorization header"})
            for m, pattern, name in ROUTES:
                match = pattern.match(url.path)
                if m == method and match:
                    groups = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                    return getattr(self, "_" + name)(h, entry, **groups)
            return self._send(h, 404, {"error": f"stand-in: no route {method} {url.path}"})

    def _send(self, h, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _repo(self, h, kind: str, repo: str, rev: str | None):
        r = self.repos.get((kind.rstrip("s"), repo))
        if r is None:
            self._send(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None, None
        branch = r["branches"].get(rev or "main")
        if branch is None:
            self._send(h, 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            return r, None
        return r, branch

    def _info(self, h, entry, kind, repo, rev=None):
        r, branch = self._repo(h, kind, repo, rev)
        if branch is None:
            return
        card = {}
        if "README.md" in branch["files"]:
            text = branch["files"]["README.md"].decode()
            if text.startswith("---\n"):
                card = yaml.safe_load(text.split("\n---", 2)[0][4:]) or {}
        self._send(h, 200, {"id": repo, "sha": branch["sha"], "private": r["private"],
                            "siblings": [{"rfilename": p} for p in sorted(branch["files"])],
                            "tags": list(card.get("tags") or []), "cardData": card})

    def _create(self, h, entry):
        body = entry["json"]
        kind = body.get("type") or "model"
        repo = f"{body['organization']}/{body['name']}"
        if (kind, repo) in self.repos:
            return self._send(h, 409, {"error": "You already created this model repo"})
        self.add_repo(kind, repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                      private=body.get("visibility") == "private")
        self._send(h, 200, {"url": f"{self.url}/{'datasets/' if kind == 'dataset' else ''}{repo}"})

    def _validate_yaml(self, h, entry):
        self._send(h, 200, {"errors": [], "warnings": []})

    def _branch(self, h, entry, kind, repo, rev):
        r, main = self._repo(h, kind, repo, None)
        if main is None:
            return
        if rev in r["branches"]:
            return self._send(h, 409, {"error": "Reference already exists"})
        r["branches"][rev] = {"sha": main["sha"], "files": dict(main["files"])}
        self._send(h, 200, {})

    def _preupload(self, h, entry, kind, repo, rev):
        r, branch = self._repo(h, kind, repo, rev)
        if branch is None:
            return
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in entry["json"]["files"]]
        self._send(h, 200, {"files": files, "commitOid": branch["sha"]})

    def _commit(self, h, entry, kind, repo, rev):
        r, branch = self._repo(h, kind, repo, rev)
        if branch is None:
            return
        lines = [json.loads(line) for line in entry["body"].decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != branch["sha"]:
            return self._send(h, 412, {"error": "A commit has happened since. Please refresh and try again."})
        ops = [x for x in lines if x["key"] != "header"]
        for op in ops:
            v = op["value"]
            if op["key"] == "file":
                branch["files"][v["path"]] = base64.b64decode(v["content"])
            elif op["key"] == "deletedFile":
                branch["files"].pop(v["path"], None)
            elif op["key"] == "deletedFolder":
                for p in [p for p in branch["files"] if p.startswith(v["path"].rstrip("/") + "/")]:
                    del branch["files"][p]
            else:  # lfsFile needs an LFS/Xet upload this stand-in does not offer
                return self._send(h, 400, {"error": f"stand-in: unsupported operation {op['key']}"})
        branch["sha"] = self._sha()
        self.commits.append({"repo": repo, "kind": kind.rstrip("s"), "revision": rev, "header": header, "operations": ops})
        prefix = "datasets/" if kind == "datasets" else ""
        self._send(h, 200, {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{branch['sha']}", "commitOid": branch["sha"],
                            "success": True})
