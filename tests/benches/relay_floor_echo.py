#!/usr/bin/env python3
"""The floor under the tunnel's added echo latency on this machine.

64-byte round trips to an echo server (socat PIPE), directly and through two plain TCP relays
in a chain (socat, in the places of cloudstream and edgestream; no TLS, no framing). Prints
p50 and p99 of both and what the relays add, to set beside scenario 3 of
`cargo bench -p tether-e2e --bench tunnel`.

    apt-get install -y socat && python3 tests/benches/relay_floor_echo.py
"""
import socket
import subprocess
import time

ROUNDS, WARM_UP = 5000, 500
ECHO, RELAY_CLOUD, RELAY_EDGE = 19101, 19102, 19103


def socat(*args):
    return subprocess.Popen(["socat", *args])


def connect(port):
    """Connects once socat listens (it prints nothing when it does): refused for up to 5 s."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def round_trips(port):
    """p50 and p99 in µs of ROUNDS 64-byte round trips after WARM_UP ones."""
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg, took = b"x" * 64, []
        for i in range(WARM_UP + ROUNDS):
            start = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                chunk = s.recv(len(msg) - got)
                if not chunk:
                    raise SystemExit("the echo server closed the connection")
                got += len(chunk)
            if i >= WARM_UP:
                took.append((time.perf_counter_ns() - start) / 1000)
    took.sort()
    return took[len(took) // 2], took[len(took) * 99 // 100]


def main():
    procs = [
        socat(f"TCP-LISTEN:{ECHO},reuseaddr,fork", "PIPE"),
        socat("-b", "65536", f"TCP-LISTEN:{RELAY_CLOUD},reuseaddr,fork",
              f"TCP:127.0.0.1:{ECHO},nodelay"),
        socat("-b", "65536", f"TCP-LISTEN:{RELAY_EDGE},reuseaddr,fork",
              f"TCP:127.0.0.1:{RELAY_CLOUD},nodelay"),
    ]
    try:
        for _ in range(2):
            direct, relayed = round_trips(ECHO), round_trips(RELAY_EDGE)
            print(f"direct p50 {direct[0]:.0f} µs p99 {direct[1]:.0f}; "
                  f"through two relays p50 {relayed[0]:.0f} µs p99 {relayed[1]:.0f}; "
                  f"added p50 {relayed[0] - direct[0]:.0f} µs")
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
