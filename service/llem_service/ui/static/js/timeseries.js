// The power timeline as the API serves it in CSV (/v1/experiments/{id}/timeseries?format=csv):
// a header row, then one row per GPU per sampling round. Empty cells are nulls.

const NUMERIC = new Set([
  "t_s",
  "power_t_s",
  "power_w",
  "temperature_c",
  "sm_clock_mhz",
  "memory_used_bytes",
  "utilization_pct",
  "clock_event_reasons",
]);

function splitLine(line) {
  const cells = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') {
        cell += '"';
        i += 1;
      } else if (c === '"') {
        quoted = false;
      } else {
        cell += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ",") {
      cells.push(cell);
      cell = "";
    } else {
      cell += c;
    }
  }
  cells.push(cell);
  return cells;
}

/** {device_uuid: {t_s: [...], power_w: [...], ..., phase: [...]}} in time order. */
export function parseTimeline(csv) {
  const lines = csv.split(/\r?\n/).filter((l) => l.length > 0);
  if (lines.length === 0) return {};
  const header = splitLine(lines[0]);
  const devices = {};
  for (let i = 1; i < lines.length; i += 1) {
    const cells = splitLine(lines[i]);
    const row = {};
    header.forEach((name, j) => {
      const raw = cells[j] ?? "";
      row[name] = NUMERIC.has(name) ? (raw === "" ? null : Number(raw)) : raw;
    });
    const columns = (devices[row.device_uuid] ||= Object.fromEntries(header.map((n) => [n, []])));
    for (const name of header) columns[name].push(row[name]);
  }
  return devices;
}
