//! An invite token as a QR code in the terminal (`zerok invite --qr`), for a phone's camera.
//!
//! Tokens are upper-case base32 behind `ZK1`, so the `qrcode` crate encodes them in QR's
//! compact alphanumeric mode. Two modules a character (`▀`, `▄`, `█`, space), drawn for a dark
//! terminal background: light modules are drawn, dark ones left blank, with the quiet zone
//! the standard asks for around them.

use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};

/// Why a token could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("the invite does not fit a QR code: {0}")]
pub struct QrError(String);

/// `text` as a QR code drawn in lines of text.
pub fn render(text: &str) -> Result<String, QrError> {
    let code = QrCode::new(text.as_bytes()).map_err(|e| QrError(e.to_string()))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The modules of the code `render` drew, read back from its text (`true` = dark), without
/// the quiet zone; for tests.
pub fn read_back(drawn: &str, width: usize) -> Vec<bool> {
    // Each character is two rows: top half, bottom half; a drawn half is a light module.
    let rows: Vec<Vec<char>> = drawn.lines().map(|l| l.chars().collect()).collect();
    let mut modules = Vec::new();
    let quiet = (rows.first().map_or(0, Vec::len) - width) / 2;
    for y in 0..width {
        let (line, half) = ((y + quiet) / 2, (y + quiet) % 2);
        for x in 0..width {
            let c = rows[line][x + quiet];
            let light = matches!((c, half), ('█', _) | ('▀', 0) | ('▄', 1));
            modules.push(!light);
        }
    }
    modules
}

/// The modules of the code for `text` (`true` = dark), as the `qrcode` crate makes it.
pub fn modules(text: &str) -> Result<(Vec<bool>, usize), QrError> {
    let code = QrCode::new(text.as_bytes()).map_err(|e| QrError(e.to_string()))?;
    let width = code.width();
    Ok((
        code.to_colors()
            .into_iter()
            .map(|c| c == Color::Dark)
            .collect(),
        width,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drawn_code_reads_back_as_the_tokens_code() {
        let token = "ZK1".to_owned() + &"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".repeat(6);
        let drawn = render(&token).expect("fits");
        let (want, width) = modules(&token).expect("fits");
        assert_eq!(read_back(&drawn, width), want);
        // Another token draws another code.
        let other = render(&token.replace('A', "B")).expect("fits");
        assert_ne!(read_back(&other, width), want);
    }

    #[test]
    fn too_long_a_text_is_an_error_not_a_panic() {
        assert!(render(&"Z".repeat(8000)).is_err());
    }
}
