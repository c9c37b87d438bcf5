//! Framing of STUN and ChannelData messages on a byte stream (TCP, TLS): RFC 8656 §12.5 and
//! RFC 8489 §6.2.2. Check-then-parse: [`frame_len`] says how long the next frame is, or that more
//! bytes are needed, before anything is decoded.

use super::channel_data;

/// The stream cannot be framed: it is neither STUN nor ChannelData. The connection should close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("first byte is neither STUN nor ChannelData")]
    NotTurn,
    #[error("STUN length is not a multiple of 4")]
    BadStunLength,
}

/// Length of the frame at the start of `buf`: `Ok(Some(n))` when `buf[..n]` holds it whole,
/// `Ok(None)` when more bytes are needed. ChannelData frames include their padding to 4 bytes.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let need = match first {
        0..=3 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len % 4 != 0 {
                return Err(FramingError::BadStunLength);
            }
            super::HEADER_LEN + len
        }
        0x40..=0x7F => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            channel_data::HEADER_LEN + len + channel_data::stream_padding(len)
        }
        _ => return Err(FramingError::NotTurn),
    };
    Ok((buf.len() >= need).then_some(need))
}

/// The largest frame [`frame_len`] can ask for; a stream read buffer of this size always suffices.
pub const MAX_FRAME: usize = super::HEADER_LEN + 0xFFFF;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5]), Ok(None));
        assert_eq!(
            frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0, 9]),
            Ok(Some(12))
        );
        assert_eq!(frame_len(&[0x40, 0, 0, 0]), Ok(Some(4)));
        let mut stun = vec![0, 1, 0, 4];
        stun.extend_from_slice(&[0; 16]);
        assert_eq!(frame_len(&stun), Ok(None));
        stun.extend_from_slice(&[0; 4]);
        assert_eq!(frame_len(&stun), Ok(Some(24)));
        assert_eq!(frame_len(&[0, 1, 0, 2]), Err(FramingError::BadStunLength));
        assert_eq!(frame_len(&[0x80]), Err(FramingError::NotTurn));
        assert_eq!(frame_len(&[0x16, 3, 1]), Err(FramingError::NotTurn));
    }
}
