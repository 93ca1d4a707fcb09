"""moto_server, with each request handled alone.

moto's threaded server runs requests side by side without a lock around its backends, so two
concurrent conditional PutItems on one item can both pass their condition: a lost update that
real DynamoDB never allows. The tests race writers on purpose (optimistic concurrency), so the
emulator must be atomic per request. Connections are still accepted concurrently.

Usage: python3 scripts/moto_server.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    run_simple(host, port, one_at_a_time, threaded=True)


if __name__ == "__main__":
    main()
