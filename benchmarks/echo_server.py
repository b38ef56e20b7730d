"""A trivial stdio JSON-RPC server for benchmarks: answers each request with its params.

Deliberately plain (json module, line at a time), like the reference echo
server the published peer figures were measured with.
"""

import json
import sys


def main() -> None:
    out = sys.stdout
    for line in sys.stdin:
        message = json.loads(line)
        if "id" in message and "method" in message:
            result = {"echo": message.get("params")}
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            out.write(json.dumps(reply) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
