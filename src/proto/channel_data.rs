//! TURN ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number, length) and the
//! application data. Parsed by hand, zero-copy: this is the data path.

/// Smallest and largest channel numbers a client may bind. RFC 8656 §12 narrowed the range to
/// 0x4000..=0x4FFF, but RFC 5766 allowed up to 0x7FFF and coturn's clients (turnutils_uclient)
/// still pick numbers there, so the older range is accepted.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;
/// Length of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// A channel number a client may bind (RFC 8656 §12): one in `CHANNEL_MIN..=CHANNEL_MAX`, which
/// [`ChannelNumber::new`] checks, so a number held in this type never needs checking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// `n` as a channel number; `None` outside `CHANNEL_MIN..=CHANNEL_MAX`.
    #[inline]
    pub const fn new(n: u16) -> Option<Self> {
        if n >= CHANNEL_MIN && n <= CHANNEL_MAX {
            Some(ChannelNumber(n))
        } else {
            None
        }
    }

    /// The number as it goes on the wire.
    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// A ChannelData message borrowed from a received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: ChannelNumber,
    pub data: &'a [u8],
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than the ChannelData header")]
    TooShort,
    #[error("channel number outside 0x4000..=0x7FFF")]
    BadChannel,
    #[error("length field larger than the packet")]
    BadLength,
}

impl<'a> ChannelData<'a> {
    /// Decode a ChannelData message. Bytes after the length (padding on a stream, or anything a
    /// UDP sender appended) are ignored (RFC 8656 §12.5).
    #[inline]
    pub fn decode(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        if buf.len() < HEADER_LEN {
            return Err(ChannelDataError::TooShort);
        }
        let channel = ChannelNumber::new(u16::from_be_bytes([buf[0], buf[1]]))
            .ok_or(ChannelDataError::BadChannel)?;
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let data = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(ChannelDataError::BadLength)?;
        Ok(ChannelData { channel, data })
    }
}

/// Write a ChannelData header for `len` bytes of data into `out[..4]`.
#[inline]
pub fn write_header(out: &mut [u8], channel: ChannelNumber, len: usize) {
    out[0..2].copy_from_slice(&channel.get().to_be_bytes());
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Padding a ChannelData message of `len` data bytes needs on a stream transport (RFC 8656 §12.5).
#[inline]
pub fn stream_padding(len: usize) -> usize {
    (4 - (len % 4)) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_write() {
        let mut b = vec![0u8; 4];
        write_header(&mut b, ChannelNumber::new(0x4001).unwrap(), 5);
        b.extend_from_slice(b"hello");
        let cd = ChannelData::decode(&b).unwrap();
        assert_eq!(cd.channel.get(), 0x4001);
        assert_eq!(cd.data, b"hello");
        b.extend_from_slice(&[0, 0, 0]);
        assert_eq!(ChannelData::decode(&b).unwrap().data, b"hello");
        assert_eq!(stream_padding(5), 3);
        assert_eq!(stream_padding(8), 0);
        assert_eq!(
            ChannelData::decode(&[0x40, 0]),
            Err(ChannelDataError::TooShort)
        );
        assert_eq!(
            ChannelData::decode(&[0x80, 0, 0, 0]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            ChannelData::decode(&[0x7F, 0xFF, 0, 0])
                .unwrap()
                .channel
                .get(),
            0x7FFF
        );
        assert_eq!(
            ChannelData::decode(&[0x3F, 0xFF, 0, 0]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            ChannelData::decode(&[0x40, 0, 0, 1]),
            Err(ChannelDataError::BadLength)
        );
        assert_eq!(ChannelData::decode(&[0x4F, 0xFF, 0, 0]).unwrap().data, b"");
    }

    #[test]
    fn channel_numbers_are_checked_once() {
        assert_eq!(ChannelNumber::new(CHANNEL_MIN - 1), None);
        assert_eq!(
            ChannelNumber::new(CHANNEL_MIN).map(ChannelNumber::get),
            Some(0x4000)
        );
        assert_eq!(
            ChannelNumber::new(CHANNEL_MAX).map(ChannelNumber::get),
            Some(CHANNEL_MAX)
        );
        assert_eq!(ChannelNumber::new(CHANNEL_MAX + 1), None);
        assert_eq!(ChannelNumber::new(0x4ABC).unwrap().to_string(), "0x4abc");
        assert_eq!(size_of::<ChannelNumber>(), 2);
    }
}
