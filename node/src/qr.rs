//! A relay line as a QR code in the terminal, so a user can take it from
//! the operator's screen with a phone camera instead of retyping it.
//!
//! Two modules per character cell (`▀`, `▄`, `█`, space), drawn for a
//! terminal with a dark background: a block is a *light* module, so the
//! code reads dark-on-light as scanners expect. Four light modules of quiet
//! zone surround it, as the standard asks.

use anyhow::{Context, Result};
use qrcode::{Color, EcLevel, QrCode};

/// Light modules around the code (ISO/IEC 18004 asks for four).
const QUIET_ZONE: isize = 4;

/// `text` as lines of block characters.
pub fn render(text: &str) -> Result<String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .context("the line is too long for a QR code")?;
    let width = code.width() as isize;
    let colors = code.to_colors();
    let light = |x: isize, y: isize| {
        let inside = (0..width).contains(&x) && (0..width).contains(&y);
        !inside || colors[(y * width + x) as usize] == Color::Light
    };
    let mut out = String::new();
    let mut y = -QUIET_ZONE;
    while y < width + QUIET_ZONE {
        for x in -QUIET_ZONE..width + QUIET_ZONE {
            out.push(match (light(x, y), light(x, y + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
        y += 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the drawing back into pixels (light = white, 4 per module)
    /// and decodes it with an independent QR reader.
    fn decode(drawing: &str) -> String {
        let rows: Vec<Vec<bool>> = drawing
            .lines()
            .flat_map(|line| {
                let top: Vec<bool> = line.chars().map(|c| matches!(c, '█' | '▀')).collect();
                let bottom: Vec<bool> = line.chars().map(|c| matches!(c, '█' | '▄')).collect();
                [top, bottom]
            })
            .collect();
        const SCALE: usize = 4;
        let (w, h) = (rows[0].len() * SCALE, rows.len() * SCALE);
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
            if rows[y / SCALE][x / SCALE] {
                255
            } else {
                0
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one code in the drawing");
        grids[0].decode().expect("decodes").1
    }

    #[test]
    fn a_relay_line_reads_back_from_its_drawing() {
        let line = "burrow-relay://relay.example.org:443/api/v2/events/5e1f0c2a?k=cYf4TF4YE4DHaxLw9WQg_RanBasMZztSrrMYSHoWl10&c=h2,h3&pin=FVitMW_K9U7yBFkwi6UwaaTvKwQDUYCErOCEAr0Ewq4&ip=203.0.113.7&id=12D3KooWJRhFkA8maribDTchfaFnFWdnMHLViCTDhLxqwsbptmMH&x=7058f4bd";
        let drawing = render(line).expect("renders");
        let widths: Vec<usize> = drawing.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "a rectangle");
        assert!(widths[0] <= 80, "fits a terminal: {} columns", widths[0]);
        assert_eq!(decode(&drawing), line);
    }

    #[test]
    fn an_impossible_line_is_an_error_not_a_panic() {
        assert!(render(&"x".repeat(5000)).is_err());
    }
}
