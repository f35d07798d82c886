"""Decide for a user, report that the message was sent and opened, then read the user's profile.

Start the service first with `nextbest serve`; run as `python examples/serving/client.py USER_ID`
(with `NEXTBEST_API_KEY` set when the service asks for a key).
"""

import os
import sys

import httpx

url = os.environ.get("NEXTBEST_URL", "http://127.0.0.1:3000")
user_id = sys.argv[1]

headers = {"X-API-Key": os.environ.get("NEXTBEST_API_KEY", "")}  # ignored unless the service asks for a key

with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
    decision = client.post("/decide", json={"user_id": user_id, "context": {"campaign_id": "readme"}}).raise_for_status().json()
    for action in decision["actions"]:
        print(f"send {action['offer_id']} by {action['channel']} at {action['send_at']} (EV {action['expected_value']:.2f})")
        for outcome in ("sent", "opened"):
            client.post("/feedback", json={"decision_id": decision["decision_id"], "outcome": outcome,
                                           "offer_id": action["offer_id"], "channel": action["channel"]}).raise_for_status()
    if not decision["actions"]:
        print("no action:", ", ".join(sorted({r["reason"] for r in decision["filtered"]})) or "nothing has positive value")
    profile = client.post("/profile", json={"user_id": user_id}).raise_for_status().json()
    print("lifecycle stage:", profile["tags"].get("lifecycle_stage"), "| contacts today:",
          {c: n["today"] for c, n in profile["contacts"].items() if n["today"]})
