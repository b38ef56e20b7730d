// Preload (node --require loopback.cjs) that makes a server which calls
// listen(port) with no host bind the loopback address instead of every
// interface. The reference servers take a port (PORT) but no host; tests and
// the conformance harness must not expose them beyond this machine.
// LOOPBACK_HOST overrides the address (default 127.0.0.1).
"use strict";
const net = require("net");

const host = process.env.LOOPBACK_HOST || "127.0.0.1";
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  const isPort =
    typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first));
  if (isPort && typeof args[1] !== "string") {
    args.splice(1, 0, host);
  }
  return listen.apply(this, args);
};
