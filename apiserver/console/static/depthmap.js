// A depth map as the API sends it (raw little-endian float16, X-Depth-Shape "H,W") and its
// colour preview, drawn in the page so that hovering reads the real value, not the colours.

const HALF = new Float32Array(65536);
for (let h = 0; h < 65536; h++) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) HALF[h] = sign * frac * 2 ** -24;
  else if (exp === 31) HALF[h] = frac ? NaN : sign * Infinity;
  else HALF[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Decode the API's float16 answer; refuses a shape or dtype it does not understand. */
export function decode(buffer, shapeHeader, dtypeHeader) {
  if (dtypeHeader !== "<f2") throw new Error(`unexpected depth dtype ${dtypeHeader}`);
  const [height, width] = (shapeHeader || "").split(",").map((v) => Number.parseInt(v, 10));
  if (!(height > 0 && width > 0) || buffer.byteLength !== height * width * 2) {
    throw new Error(`depth shape ${shapeHeader} does not match ${buffer.byteLength} bytes`);
  }
  const raw = new Uint16Array(buffer);
  const values = new Float32Array(raw.length);
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < raw.length; i++) {
    const v = HALF[raw[i]];
    values[i] = v;
    if (Number.isFinite(v)) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  return { width, height, values, min, max, at: (x, y) => values[y * width + x] };
}

// Turbo colour map, polynomial fit (Mikhailov 2019, Apache-2.0).
function turbo(x) {
  const r = 0.13572138 + x * (4.6153926 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))));
  const g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))));
  const b = 0.1066733 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))));
  const c = (v) => Math.max(0, Math.min(255, Math.round(v * 255)));
  return [c(r), c(g), c(b)];
}

/** Paint the map on a canvas of its own size: near is red, far is blue. */
export function paint(canvas, map) {
  canvas.width = map.width;
  canvas.height = map.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(map.width, map.height);
  const span = map.max - map.min || 1;
  for (let i = 0; i < map.values.length; i++) {
    const [r, g, b] = turbo(1 - (map.values[i] - map.min) / span);
    image.data.set([r, g, b, 255], i * 4);
  }
  ctx.putImageData(image, 0, 0);
}

/** The map pixel under a pointer event on an element showing the map scaled. */
export function pixelAt(event, element, width, height) {
  const box = element.getBoundingClientRect();
  const x = Math.min(width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * width)));
  const y = Math.min(height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * height)));
  return { x, y };
}
