//! A picture of the heap: one row per span, one cell per block, written as a PNG.
//!
//! Rows are grouped by size class (labelled on the left); every row is the same width,
//! so a block of a span with `n` blocks is `1/n` of it (when `n` exceeds the pixels, a
//! pixel blends the blocks it covers). A title line, and a colour key, are drawn with
//! a built-in 5×7 bitmap font.

use std::io::BufWriter;
use std::path::Path;

use tidyheap::{BlockState, OccupancyMap, SpanKind};

type Rgb = [u8; 3];

const BACKGROUND: Rgb = [250, 250, 250];
const INK: Rgb = [30, 30, 30];
/// Colour and legend label of each block state.
const KEY: [(BlockState, Rgb, &str); 5] = [
    (BlockState::Movable, [45, 110, 220], "LIVE MOVABLE"),
    (BlockState::Fixed, [40, 160, 80], "LIVE FIXED"),
    (BlockState::Pinned, [225, 60, 45], "PINNED"),
    (BlockState::Cached, [190, 212, 240], "CACHED (FREE, OUT)"),
    (BlockState::Free, [215, 215, 215], "FREE"),
];

const GRID_WIDTH: usize = 1000;
const ROW: usize = 5;
const ROW_GAP: usize = 1;
const GROUP_GAP: usize = 4;
const LABEL_WIDTH: usize = 80;
const MARGIN: usize = 12;

fn colour(s: BlockState) -> Rgb {
    KEY.iter().find(|k| k.0 == s).map_or(INK, |k| k.1)
}

/// Rows of a 5×7 glyph, top first, bit 4 leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        _ => [0; 7],
    }
}

/// An RGB canvas.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&BACKGROUND);
        }
        Self { w, h, px }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgb) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Draws `text` (upper-cased) at `(x, y)`, each font pixel `scale`² screen pixels.
    /// Returns the x after the text.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: Rgb) -> usize {
        let mut cx = x;
        for ch in text.chars().flat_map(char::to_uppercase) {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        self.rect(cx + col * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
            cx += 6 * scale;
        }
        cx
    }
}

/// Text width in pixels.
fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * 6 * scale
}

/// "64 B", "4 KIB", "1.5 KIB": a block size for a class label.
fn size_label(bytes: usize) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes.is_multiple_of(1024) {
        format!("{} KIB", bytes / 1024)
    } else {
        format!("{:.1} KIB", bytes as f64 / 1024.0)
    }
}

/// Writes `map` as a PNG at `path` under `title`.
pub fn write_heap_png(path: &Path, map: &OccupancyMap, title: &str) -> std::io::Result<()> {
    // Layout: title, key, a line of totals, then the grid.
    let title_h = 7 * 2 + 10;
    let key_h = 7 + 10;
    let mut grid_h = 0;
    let mut prev: Option<(SpanKind, usize)> = None;
    for s in &map.spans {
        if prev.is_some_and(|p| p != (s.kind, s.class)) {
            grid_h += GROUP_GAP;
        }
        prev = Some((s.kind, s.class));
        grid_h += ROW + ROW_GAP;
    }
    let subtitle = format!(
        "{} SPANS, {:.1} MIB COMMITTED (+{:.1} MIB EMPTY, KEPT), ROW = SPAN, CELL = BLOCK",
        map.spans.len(),
        map.spans.iter().map(|s| s.bytes).sum::<usize>() as f64 / (1 << 20) as f64,
        map.empty_committed_bytes as f64 / (1 << 20) as f64,
    );
    let key_w: usize = KEY.iter().map(|k| 14 + text_width(k.2, 1) + 16).sum();
    let w = (2 * MARGIN + LABEL_WIDTH + GRID_WIDTH)
        .max(2 * MARGIN + text_width(title, 2))
        .max(2 * MARGIN + key_w + text_width(&subtitle, 1) + 20);
    let h = MARGIN + title_h + key_h + grid_h.max(ROW) + MARGIN;
    let mut cv = Canvas::new(w, h);

    let mut y = MARGIN;
    cv.text(MARGIN, y, title, 2, INK);
    y += title_h;
    let mut x = MARGIN;
    for (_, c, label) in KEY {
        cv.rect(x, y, 10, 7, c);
        x = cv.text(x + 14, y, label, 1, INK) + 16;
    }
    cv.text(x + 4, y, &subtitle, 1, [110, 110, 110]);
    y += key_h;

    let gx = MARGIN + LABEL_WIDTH;
    let mut prev: Option<(SpanKind, usize)> = None;
    for s in &map.spans {
        let group = (s.kind, s.class);
        if prev != Some(group) {
            if prev.is_some() {
                y += GROUP_GAP;
            }
            let kind = if s.kind == SpanKind::Movable {
                ""
            } else {
                " F"
            };
            cv.text(
                MARGIN,
                y,
                &format!("{}{kind}", size_label(s.block_size)),
                1,
                INK,
            );
        }
        prev = Some(group);
        let n = s.blocks.len().max(1);
        for px in 0..GRID_WIDTH {
            // Blocks covered by this pixel column: [lo, hi).
            let lo = px * n / GRID_WIDTH;
            let hi = ((px + 1) * n).div_ceil(GRID_WIDTH).max(lo + 1).min(n);
            let mut sum = [0u32; 3];
            for b in &s.blocks[lo..hi] {
                let c = colour(*b);
                for k in 0..3 {
                    sum[k] += u32::from(c[k]);
                }
            }
            let cnt = (hi - lo) as u32;
            let mut c = sum.map(|v| (v / cnt) as u8);
            // A thin gap between cells when cells are wide enough to show it.
            if GRID_WIDTH / n >= 4 && (px + 1) * n / GRID_WIDTH != px * n / GRID_WIDTH {
                c = BACKGROUND;
            }
            cv.rect(gx + px, y, 1, ROW, c);
        }
        y += ROW + ROW_GAP;
    }

    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&cv.px)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}
