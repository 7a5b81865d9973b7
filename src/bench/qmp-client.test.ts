import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { QmpLines, parseQmpLine } from "./qmp-client.js";

describe("QMP lines", () => {
  it("sorts greeting, returns, errors and events", () => {
    assert.deepEqual(parseQmpLine('{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}'), { kind: "greeting" });
    assert.deepEqual(parseQmpLine('{"return": {}}'), { kind: "return", value: {} });
    assert.deepEqual(parseQmpLine('{"return": {"status": "completed"}, "id": 1}'), { kind: "return", value: { status: "completed" } });
    assert.deepEqual(parseQmpLine('{"error": {"class": "GenericError", "desc": "no"}}'), { kind: "error", class: "GenericError", desc: "no" });
    assert.deepEqual(parseQmpLine('{"timestamp": {"seconds": 1}, "event": "STOP"}'), { kind: "event", event: "STOP", data: undefined });
  });

  it("refuses what is not a QMP message", () => {
    assert.throws(() => parseQmpLine("qemu-system-x86_64: warning"), (e: unknown) => e instanceof BenchError && /not JSON/.test(e.message));
    assert.throws(() => parseQmpLine('{"hello": 1}'), (e: unknown) => e instanceof BenchError && /unexpected/.test(e.message));
  });

  it("reassembles messages split across chunks and several in one chunk", () => {
    const lines = new QmpLines();
    assert.deepEqual(lines.push('{"ret'), []);
    assert.deepEqual(lines.push('urn": {}}\r\n{"event": "RESUME"}\n{"return": 1'), [{ kind: "return", value: {} }, { kind: "event", event: "RESUME", data: undefined }]);
    assert.deepEqual(lines.push("}\n\n"), [{ kind: "return", value: 1 }]);
  });
});
