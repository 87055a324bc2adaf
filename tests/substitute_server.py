#!/usr/bin/env python3
"""A binary-cache server for tests/substitute.rs: serves a directory over HTTP(S) on
127.0.0.1 with keep-alive, and can misbehave the way real servers do.

usage: substitute_server.py DIR [--tls CERT KEY] [--stall]
  --stall  NAR files: send the headers and half the body, then go silent (never close).
Prints the port it listens on, then serves until killed.
"""
import http.server
import os
import ssl
import sys
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stall = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.stall and self.path.startswith("/nar/"):
            path = self.translate_path(self.path)
            try:
                data = open(path, "rb").read()
            except OSError:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            time.sleep(3600)
            return
        super().do_GET()


class Server(http.server.ThreadingHTTPServer):
    # Clients keep many requests in flight; socketserver's default backlog of 5 would refuse
    # connections no real cache refuses.
    request_queue_size = 128
    daemon_threads = True


def main():
    args = sys.argv[1:]
    directory = args.pop(0)
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = (args[i + 1], args[i + 2])
    Handler.stall = "--stall" in args
    os.chdir(directory)
    server = Server(("127.0.0.1", 0), Handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
