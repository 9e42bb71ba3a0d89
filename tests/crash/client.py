"""One load client of the crash tests, run as its own process:

    python -m tests.crash.client --url URL --key KEY --name c0 --log FILE --stop FILE --seed N

It loops reserve -> commit | cancel | abandon until the stop file exists, retrying every call
on a transport error or a 5xx with the same request (same ``request_id``, same commit body)
until it gets a definitive answer. Each definitive answer (2xx or 4xx) is appended to the log
as one JSON line, flushed before the next call: the log is what the client was *told*, the
acknowledgements the ledger must honour after any crash. A 500 is logged too (as ``error``),
since the API promises 503 for a database that is busy or away.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

ORG = "crash"
TEAMS = ("t0", "t1", "t2")
USERS = ("u0", "u1", "u2", "u3")
HOLDS_USD = ("0.02", "0.03", "0.05")
MODEL = "gpt-4o"
RETRY_FOR_SECONDS = 90.0


class Client:
    def __init__(self, args: argparse.Namespace, log: TextIO) -> None:
        self.http = httpx.Client(
            base_url=args.url,
            headers={"Authorization": f"Bearer {args.key}"},
            timeout=httpx.Timeout(20.0, connect=2.0),  # money-safe: seconds
        )
        self.log = log
        self.name: str = args.name
        self.ttl_seconds: int = args.ttl_seconds
        self.rng = random.Random(args.seed)

    def write(self, entry: dict[str, Any]) -> None:
        entry["client"] = self.name
        self.log.write(json.dumps(entry, sort_keys=True) + "\n")
        self.log.flush()

    def call(self, path: str, body: dict[str, Any], op: str) -> tuple[int, Any, dict[str, int]]:
        """POST until a definitive answer; returns (status, document, retries by cause)."""
        retries: dict[str, int] = {}
        backoff = 0.05
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            cause: str
            try:
                response = self.http.post(path, json=body)
            except httpx.TransportError as error:
                cause = type(error).__name__
            else:
                if response.status_code < 500:
                    return response.status_code, response.json(), retries
                cause = str(response.status_code)
                if response.status_code != 503:
                    self.write(
                        {
                            "op": "error",
                            "of": op,
                            "path": path,
                            "status": cause,
                            "body": response.text[:2000],
                        }
                    )
            retries[cause] = retries.get(cause, 0) + 1
            if time.monotonic() > deadline:
                return 0, None, retries
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    def one_request(self, n: int) -> None:
        request_id = f"{self.name}-{n}"
        body = {
            "request_id": request_id,
            "subjects": [
                {"type": "team", "id": self.rng.choice(TEAMS)},
                {"type": "org", "id": ORG},
                {"type": "user", "id": self.rng.choice(USERS)},
            ],
            "model": MODEL,
            "amount_usd": self.rng.choice(HOLDS_USD),
            "ttl_seconds": self.ttl_seconds,
        }
        status, document, retries = self.call("/v1/reservations", body, "reserve")
        entry: dict[str, Any] = {
            "op": "reserve",
            "request_id": request_id,
            "status": status,
            "retries": retries,
            "amount_usd": body["amount_usd"],
        }
        if status == 201:
            entry["reservation_id"] = document["reservation_id"]
        elif status:
            entry["problem"] = document.get("type")
        self.write(entry)
        if status != 201:
            return
        reservation_id = document["reservation_id"]
        action = self.rng.choices(("commit", "cancel", "abandon"), weights=(70, 20, 10))[0]
        if action == "abandon":
            # A dead request: its hold must be released by the sweeper.
            self.write(
                {"op": "abandon", "request_id": request_id, "reservation_id": reservation_id}
            )
            return
        if action == "commit":
            usage = {
                "prompt_tokens": self.rng.randint(100, 3000),
                "completion_tokens": self.rng.randint(10, 1000),
            }  # at most 0.0175 USD for gpt-4o: below every hold
            status, document, retries = self.call(
                f"/v1/reservations/{reservation_id}/commit", {"usage": usage}, "commit"
            )
            entry = {
                "op": "commit",
                "request_id": request_id,
                "reservation_id": reservation_id,
                "status": status,
                "retries": retries,
            }
            if status == 200:
                entry |= {"cost_usd": document["cost_usd"], "late": document["late"]}
        else:
            status, document, retries = self.call(
                f"/v1/reservations/{reservation_id}/cancel", {}, "cancel"
            )
            entry = {
                "op": "cancel",
                "request_id": request_id,
                "reservation_id": reservation_id,
                "status": status,
                "retries": retries,
            }
            if status == 200:
                entry["state"] = document["state"]
        if status and status != 200:
            entry["problem"] = document.get("type")
        self.write(entry)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ttl-seconds", type=int, default=8)
    args = parser.parse_args()
    with args.log.open("a") as log:
        client = Client(args, log)
        n = 0
        while not args.stop.exists():
            client.one_request(n)
            n += 1
        client.write({"op": "done", "requests": n})


if __name__ == "__main__":
    main()
