#!/usr/bin/env python3
"""A B2 native-API server for tests: HTTP in front of b2sdk's RawSimulator.

No B2 server ships for local use; RawSimulator is Backblaze's own in-memory model of the
API (used by b2sdk's test suite), so this adapter only translates HTTP to its calls and
its exceptions back to B2's JSON errors. Everything it holds is lost when it exits.

    b2_server.py --port P --bucket NAME [--bucket NAME ...]

prints one line `ready <key id> <application key>` once it listens. Besides the API
(`/b2api/v2/...` and `/b2api/v3/...`, uploads, downloads) it serves one test hook:
`POST /_fail {"op": "b2_finish_large_file", "count": 2, "status": 503}` makes the next
`count` calls of that operation fail with that status.
"""

import argparse
import base64
import io
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from b2sdk.v2 import MetadataDirectiveMode, RawSimulator
from b2sdk._internal import exception as b2exc

SIM = RawSimulator()
LOCK = threading.Lock()
FAILURES = {}  # op -> [remaining, status]
BASE = ""


def error_for(exc, op):
    """B2's (status, code) for a simulator exception."""
    if isinstance(exc, b2exc.FileNotPresent):
        return (400, "file_not_present") if op == "b2_delete_file_version" else (404, "not_found")
    if isinstance(exc, b2exc.InvalidAuthToken):
        code = getattr(exc, "code", "unauthorized")
        return 401, "expired_auth_token" if code == "auth_token_expired" else code
    if isinstance(exc, b2exc.Unauthorized):
        return 401, "unauthorized"
    if isinstance(exc, b2exc.PartSha1Mismatch):
        return 400, "part_sha1_mismatch"
    if isinstance(exc, (b2exc.NonExistentBucket, b2exc.BucketIdNotFound)):
        return 400, "bad_bucket_id"
    if isinstance(exc, b2exc.ServiceError):
        return 503, "service_unavailable"
    return 400, "bad_request"


def plain(value):
    """JSON for the simulator's sets."""
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def wrap_url(kind, sim_url):
    return "%s/%s/%s" % (BASE, kind, base64.urlsafe_b64encode(sim_url.encode()).decode())


def unwrap_url(token):
    return base64.urlsafe_b64decode(token.encode()).decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body, default=plain).encode()
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def fail(self, status, code, message):
        self.reply(status, {"status": status, "code": code, "message": message})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def token(self):
        return self.headers.get("Authorization", "")

    def do_GET(self):
        self.handle_request()

    def do_HEAD(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def handle_request(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        op = parts[-1] if parts[0] == "b2api" else parts[0]
        raw = self.body() if self.command == "POST" else b""
        try:
            with LOCK:
                if op == "_fail":
                    p = json.loads(raw)
                    FAILURES[p["op"]] = [p["count"], p.get("status", 503)]
                    return self.reply(200, {})
                pending = FAILURES.get(op)
                if pending and pending[0] > 0:
                    pending[0] -= 1
                    return self.fail(pending[1], "injected", "failure injected by the test")
                self.dispatch(op, url, parts, raw)
        except Exception as exc:  # every simulator refusal becomes a B2 error
            status, code = error_for(exc, op)
            self.fail(status, code, "%s: %s" % (type(exc).__name__, exc))

    def dispatch(self, op, url, parts, raw):
        api = SIM.API_URL
        params = json.loads(raw) if raw and parts[0] == "b2api" else {}
        if parts[0] == "b2api" and self.command == "GET":
            params = dict(urllib.parse.parse_qsl(url.query))
        if params.get("prefix") and not params.get("startFileName"):
            # B2 starts a listing at its prefix; the simulator expects to be told so.
            params["startFileName"] = params["prefix"]
        if op == "b2_authorize_account":
            basic = self.token().split(" ", 1)[-1]
            key_id, _, key = base64.b64decode(basic).decode().partition(":")
            r = SIM.authorize_account("", key_id, key)
            storage = r["apiInfo"]["storageApi"]
            storage["apiUrl"] = BASE
            storage["downloadUrl"] = BASE
            if parts[1] == "v2":
                r.update(storage)
                r.pop("apiInfo")
            return self.reply(200, r)
        tok = self.token()
        if op == "b2_list_buckets":
            r = SIM.list_buckets(api, tok, params["accountId"], params.get("bucketId"),
                                 params.get("bucketName"))
            return self.reply(200, r)
        if op == "b2_get_upload_url":
            r = SIM.get_upload_url(api, tok, params["bucketId"])
            r["uploadUrl"] = wrap_url("upload", r["uploadUrl"])
            return self.reply(200, r)
        if op == "b2_get_upload_part_url":
            r = SIM.get_upload_part_url(api, tok, params["fileId"])
            r["uploadUrl"] = wrap_url("upload_part", r["uploadUrl"])
            return self.reply(200, r)
        if op == "upload":
            sim_url = unwrap_url(parts[1])
            if tok != sim_url:
                return self.fail(401, "bad_auth_token", "wrong upload authorization token")
            info = {k[len("x-bz-info-"):]: urllib.parse.unquote(v)
                    for k, v in self.headers.items() if k.lower().startswith("x-bz-info-")}
            r = SIM.upload_file(
                sim_url, tok, urllib.parse.unquote(self.headers["X-Bz-File-Name"]), len(raw),
                self.headers.get("Content-Type", "b2/x-auto"),
                self.headers["X-Bz-Content-Sha1"], info, io.BytesIO(raw))
            return self.reply(200, r)
        if op == "upload_part":
            sim_url = unwrap_url(parts[1])
            if tok != sim_url:
                return self.fail(401, "bad_auth_token", "wrong upload authorization token")
            r = SIM.upload_part(sim_url, tok, int(self.headers["X-Bz-Part-Number"]), len(raw),
                                self.headers["X-Bz-Content-Sha1"], io.BytesIO(raw))
            return self.reply(200, r)
        if op == "b2_start_large_file":
            r = SIM.start_large_file(api, tok, params["bucketId"], params["fileName"],
                                     params.get("contentType", "b2/x-auto"),
                                     params.get("fileInfo") or {})
            return self.reply(200, r)
        if op == "b2_finish_large_file":
            return self.reply(200, SIM.finish_large_file(api, tok, params["fileId"],
                                                         params["partSha1Array"]))
        if op == "b2_cancel_large_file":
            return self.reply(200, SIM.cancel_large_file(api, tok, params["fileId"]))
        if op == "b2_list_file_names":
            return self.reply(200, SIM.list_file_names(
                api, tok, params["bucketId"], params.get("startFileName"),
                params.get("maxFileCount", 100), params.get("prefix")))
        if op == "b2_list_file_versions":
            return self.reply(200, SIM.list_file_versions(
                api, tok, params["bucketId"], params.get("startFileName"),
                params.get("startFileId"), params.get("maxFileCount", 100),
                params.get("prefix")))
        if op == "b2_list_unfinished_large_files":
            return self.reply(200, SIM.list_unfinished_large_files(
                api, tok, params["bucketId"], params.get("startFileId"),
                params.get("maxFileCount", 100), params.get("namePrefix")))
        if op == "b2_copy_file":
            directive = params.get("metadataDirective", "COPY")
            r = SIM.copy_file(api, tok, params["sourceFileId"], params["fileName"],
                              metadata_directive=MetadataDirectiveMode[directive])
            return self.reply(200, r)
        if op == "b2_delete_file_version":
            return self.reply(200, SIM.delete_file_version(api, tok, params["fileId"],
                                                           params["fileName"]))
        if op == "file":
            bucket = SIM._get_bucket_by_name(parts[1])
            SIM._assert_account_auth(api, tok, bucket.account_id, "readFiles")
            with SIM.download_file_from_url(tok, SIM.DOWNLOAD_URL + url.path) as resp:
                headers = {k: str(v) for k, v in resp.headers.items()
                           if k.lower() != "content-length"}
                return self.reply(200, resp.data_bytes, headers)
        return self.fail(404, "not_found", "no such operation: %s" % url.path)


def main():
    global BASE
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bucket", action="append", default=[])
    args = ap.parse_args()
    key_id, key = SIM.create_account()
    token = SIM.authorize_account("", key_id, key)["authorizationToken"]
    for name in args.bucket:
        SIM.create_bucket(SIM.API_URL, token, key_id, name, "allPrivate")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    BASE = "http://127.0.0.1:%d" % args.port
    print("ready %s %s" % (key_id, key), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
