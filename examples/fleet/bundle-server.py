#!/usr/bin/env python3
"""The fleet example's bundle server: serves the files of one directory on
loopback with a content ETag and answers 304 Not Modified to a matching
If-None-Match, as nginx (etag on) or an S3 website do. mailgate polls with
If-None-Match, so an unchanged bundle costs each instance a round trip, not
a download and a recompile. (python3 -m http.server sends no ETag.)

    bundle-server.py PORT DIRECTORY
"""

import hashlib
import http.server
import os
import sys
import urllib.parse


class BundleHandler(http.server.BaseHTTPRequestHandler):
    directory = "."

    def do_GET(self):
        # Files of the directory only: no listing, no subdirectories.
        name = os.path.basename(urllib.parse.urlsplit(self.path).path)
        try:
            # One read: publish.sh replaces the file by a rename, so this
            # is one whole bundle and its ETag matches what is sent.
            with open(os.path.join(self.directory, name), "rb") as f:
                body = f.read()
        except OSError:
            self.send_error(404)
            return
        etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bundle-server.py PORT DIRECTORY")
    BundleHandler.directory = sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), BundleHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
