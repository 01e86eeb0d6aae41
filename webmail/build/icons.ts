/**
 * The app icon, drawn once as geometry and rendered two ways at build time: SVG for browsers that take
 * it, PNG (192, 512, and a maskable 512 whose artwork stays in the safe zone) for the install prompts
 * that want bitmaps. No image tool is needed: a tiny rasterizer with 4×4 supersampling and zlib.
 */
import { crc32, deflateSync } from 'node:zlib';

const BLUE = [0x24, 0x56, 0xc9] as const;
const WHITE = [0xff, 0xff, 0xff] as const;

/** In units of the icon's side (0..1). A maskable icon shrinks the artwork into the central 80 % (safe zone). */
function geometry(maskable: boolean) {
  const s = maskable ? 0.8 : 1;
  const o = (1 - s) / 2;
  const at = (v: number) => o + v * s;
  return {
    corner: maskable ? 0 : 0.22,
    envelope: { x0: at(0.2), y0: at(0.3), x1: at(0.8), y1: at(0.7), r: 0.04 * s },
    flap: [
      [at(0.2), at(0.33)],
      [at(0.5), at(0.55)],
      [at(0.8), at(0.33)],
    ] as const,
    stroke: 0.055 * s,
  };
}

export function iconSvg(maskable = false): string {
  const g = geometry(maskable);
  const e = g.envelope;
  const n = (v: number) => Math.round(v * 512 * 100) / 100;
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512"><rect width="512" height="512" rx="${n(g.corner)}" fill="#2456c9"/><rect x="${n(e.x0)}" y="${n(e.y0)}" width="${n(e.x1 - e.x0)}" height="${n(e.y1 - e.y0)}" rx="${n(e.r)}" fill="#fff"/><polyline points="${g.flap.map(([x, y]) => `${n(x)},${n(y)}`).join(' ')}" fill="none" stroke="#2456c9" stroke-width="${n(g.stroke)}" stroke-linecap="round" stroke-linejoin="round"/></svg>\n`;
}

function insideRoundedRect(x: number, y: number, x0: number, y0: number, x1: number, y1: number, r: number): boolean {
  if (x < x0 || x > x1 || y < y0 || y > y1) return false;
  const cx = Math.min(Math.max(x, x0 + r), x1 - r);
  const cy = Math.min(Math.max(y, y0 + r), y1 - r);
  return (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
}

function distanceToSegment(px: number, py: number, [ax, ay]: readonly number[], [bx, by]: readonly number[]): number {
  const dx = bx! - ax!;
  const dy = by! - ay!;
  const t = Math.max(0, Math.min(1, ((px - ax!) * dx + (py - ay!) * dy) / (dx * dx + dy * dy)));
  return Math.hypot(px - (ax! + t * dx), py - (ay! + t * dy));
}

/** RGBA of one point: the topmost shape that covers it. */
function paint(x: number, y: number, g: ReturnType<typeof geometry>): readonly [number, number, number, number] {
  const e = g.envelope;
  if (insideRoundedRect(x, y, e.x0, e.y0, e.x1, e.y1, e.r)) {
    const onFlap =
      distanceToSegment(x, y, g.flap[0], g.flap[1]) <= g.stroke / 2 ||
      distanceToSegment(x, y, g.flap[1], g.flap[2]) <= g.stroke / 2;
    return onFlap ? [...BLUE, 255] : [...WHITE, 255];
  }
  return insideRoundedRect(x, y, 0, 0, 1, 1, g.corner) ? [...BLUE, 255] : [0, 0, 0, 0];
}

function chunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

export function iconPng(size: number, maskable = false): Buffer {
  const g = geometry(maskable);
  const SS = 4;
  const rows: Buffer[] = [];
  for (let py = 0; py < size; py++) {
    const row = Buffer.alloc(1 + size * 4); // filter type 0 (None)
    for (let px = 0; px < size; px++) {
      const o = 1 + px * 4;
      // Inside a shape, the pixel's corners agree: only edge pixels need the 16 samples.
      const corners = [
        paint(px / size, py / size, g),
        paint((px + 1) / size, py / size, g),
        paint(px / size, (py + 1) / size, g),
        paint((px + 1) / size, (py + 1) / size, g),
      ];
      if (corners.every((c) => c.every((v, i) => v === corners[0]![i]))) {
        row.set(corners[0]!, o);
        continue;
      }
      let r = 0;
      let gr = 0;
      let b = 0;
      let a = 0;
      for (let sy = 0; sy < SS; sy++) {
        for (let sx = 0; sx < SS; sx++) {
          const [cr, cg, cb, ca] = paint((px + (sx + 0.5) / SS) / size, (py + (sy + 0.5) / SS) / size, g);
          // Averaged premultiplied, so that transparent samples do not darken the edge.
          r += cr * ca;
          gr += cg * ca;
          b += cb * ca;
          a += ca;
        }
      }
      row[o] = a ? Math.round(r / a) : 0;
      row[o + 1] = a ? Math.round(gr / a) : 0;
      row[o + 2] = a ? Math.round(b / a) : 0;
      row[o + 3] = Math.round(a / (SS * SS));
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 6; // RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(Buffer.concat(rows), { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Every icon file, by its path in dist/. */
export function iconFiles(): Record<string, string | Buffer> {
  return {
    'icon.svg': iconSvg(),
    'icons/icon-192.png': iconPng(192),
    'icons/icon-512.png': iconPng(512),
    'icons/maskable-512.png': iconPng(512, true),
  };
}
