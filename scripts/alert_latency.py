#!/usr/bin/env python3
"""Alert latency on the running system: time from a metric sample accepted by the gateway to its
alert arriving on the query API's live stream (SSE). Needs a tenant with a threshold rule
`cpu_load > 90` for 0 s grouped by host (scripts/load.sh sets one up).

    alert_latency.py --gateway URL --query-api URL --tenant ID --key SECRET [--samples 20]

Sends, one at a time, a sample over the threshold (fires) then one under (resolves) for a host of
its own, and prints p50 / p95 / max of the send-to-event time as a Markdown table row. Standard
library only.
"""
import argparse
import json
import queue
import statistics
import threading
import time
import urllib.request
from datetime import datetime, timezone


def listen(url, auth, events, ready):
    request = urllib.request.Request(url, headers={"authorization": auth, "accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=600) as stream:
        name = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith(": subscribed"):
                ready.set()
            elif line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: ") and name == "alert":
                events.put((time.monotonic(), json.loads(line[len("data: "):])))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--query-api", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    auth = f"Bearer {args.tenant}:{args.key}"
    events, ready = queue.Queue(), threading.Event()
    threading.Thread(target=listen, args=(f"{args.query_api}/alerts/stream", auth, events, ready), daemon=True).start()
    if not ready.wait(30):
        raise SystemExit("the alert stream did not open")
    host = f"latency-{int(time.time())}"
    latencies = []
    for i in range(args.samples):
        value = 95.0 if i % 2 == 0 else 10.0
        state = "firing" if value > 90 else "resolved"
        body = json.dumps({"samples": [{"host": host, "metric": "cpu_load", "value": value, "unit": "%",
                                        "timestamp": datetime.now(timezone.utc).isoformat()}]}).encode()
        request = urllib.request.Request(f"{args.gateway}/v1/metrics", data=body, method="POST",
                                         headers={"authorization": auth, "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["events_accepted"] == 1
        accepted = time.monotonic()
        while True:
            at, alert = events.get(timeout=60)
            if alert.get("series") == f"host={host}" and alert.get("state") == state:
                latencies.append((at - accepted) * 1000)
                break
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(f"| sample accepted -> alert on the SSE stream ({len(latencies)} transitions) | "
          f"p50 {statistics.median(latencies):.0f} ms, p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms |")


if __name__ == "__main__":
    main()
