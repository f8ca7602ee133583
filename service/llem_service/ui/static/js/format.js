// Numbers as people read them, with their units. Missing values are a dash, never a zero.

const nf = (digits) => new Intl.NumberFormat("en", { maximumSignificantDigits: digits });

export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  // Below 1e-4 plain digits become a row of zeros: 1.4e-17, not 0.000000000000000014.
  if (value !== 0 && Math.abs(value) < 1e-4) return value.toExponential(Math.max(0, Math.min(digits, 3) - 1));
  return nf(digits).format(value);
}

/** A count, every digit: 12,345 (num would round it to significant digits). */
export function count(value) {
  return value === null || value === undefined ? "–" : new Intl.NumberFormat("en").format(value);
}

export function unit(value, u, digits = 4) {
  return value === null || value === undefined ? "–" : `${num(value, digits)} ${u}`;
}

export function plusMinus(value, error, u, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (error === null || error === undefined) return unit(value, u, digits);
  return `${num(value, digits)} ± ${num(error, 2)} ${u}`;
}

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1e-3) return `${num(value * 1e6, 3)} µs`;
  if (value < 1) return `${num(value * 1e3, 3)} ms`;
  return `${num(value, 4)} s`;
}

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${num(value, 3)} ${units[i]}`;
}

export function percent(ratio, digits = 3) {
  if (ratio === null || ratio === undefined) return "–";
  if (ratio !== 0 && Math.abs(ratio) < 1e-5) return `${ratio < 0 ? "> −" : "< "}0.001 %`;
  return `${num(ratio * 100, digits)} %`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

export function age(seconds_) {
  if (seconds_ === null || seconds_ === undefined) return "–";
  if (seconds_ < 90) return `${Math.round(seconds_)} s`;
  if (seconds_ < 5400) return `${Math.round(seconds_ / 60)} min`;
  return `${num(seconds_ / 3600, 2)} h`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "–";
}
