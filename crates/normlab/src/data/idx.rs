//! IDX files (the format of MNIST and Fashion-MNIST), raw or gzip-compressed.
//!
//! ```no_run
//! use std::path::Path;
//! use normlab::data::idx;
//!
//! let images = idx::read_images(Path::new("t10k-images-idx3-ubyte.gz"))?;
//! let labels = idx::read_labels(Path::new("t10k-labels-idx1-ubyte.gz"))?;
//! assert_eq!(images.n, labels.len());
//! println!("{} images of {}x{}", images.n, images.rows, images.cols);
//! # Ok::<(), normlab::Error>(())
//! ```
//!
//! An IDX file is a big-endian header (two zero bytes, an element-type byte,
//! a dimension count byte, then one u32 per dimension) followed by the
//! elements. Only unsigned bytes (type 0x08) are accepted: that is all
//! (Fashion-)MNIST uses, and it lets the images stay as bytes in memory.
//!
//! The header is not trusted: the size it implies is checked against
//! [`MAX_DATA_BYTES`] before anything is read, nothing is allocated from it,
//! and the data is read through `take(expected + 1)` so that a short file, a
//! file with trailing bytes and a gzip bomb are all caught without reading
//! (or allocating) more than one byte past what the header promises.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::{Error, Result};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Element type byte for unsigned bytes, the only type accepted.
pub const TYPE_U8: u8 = 0x08;
/// Largest data section accepted (1 GiB). The full Fashion-MNIST training set
/// is 47 MB, so anything this large is a corrupt or hostile header.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const FIX: &str = "re-download it or pass --data-dir pointing at good files";

/// The content of an images file: `n` images of `rows` x `cols` bytes,
/// row-major, one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The `n · rows · cols` pixel bytes, image after image.
    pub bytes: Vec<u8>,
    /// Number of images (the header's first dimension).
    pub n: usize,
    /// Image height (the second dimension).
    pub rows: usize,
    /// Image width (the third dimension).
    pub cols: usize,
}

/// Reads an images file (IDX, magic 0x00000803), raw or gzip-compressed.
pub fn read_images(path: &Path) -> Result<Images> {
    let (reader, gzip) = open_decoded(path)?;
    decode_images(reader, gzip, path)
}

/// Reads a labels file (IDX, magic 0x00000801), raw or gzip-compressed.
/// The values are not range-checked here; the Fashion-MNIST loader does that.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (reader, gzip) = open_decoded(path)?;
    decode_labels(reader, gzip, path)
}

/// Parses an images file already in memory (raw or gzip). `path_for_errors`
/// is only used to name the source in error messages.
pub fn parse_images(bytes: &[u8], path_for_errors: &Path) -> Result<Images> {
    let (reader, gzip) = decoded(bytes);
    decode_images(reader, gzip, path_for_errors)
}

/// Parses a labels file already in memory (raw or gzip).
pub fn parse_labels(bytes: &[u8], path_for_errors: &Path) -> Result<Vec<u8>> {
    let (reader, gzip) = decoded(bytes);
    decode_labels(reader, gzip, path_for_errors)
}

/// Opens a file and returns a reader of its decoded content: decompressed if
/// the file starts with the gzip magic bytes, as is otherwise. The flag says
/// whether it was gzip (so that read errors can be blamed on the compression).
pub fn open_decoded(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    // a FIFO would block the open, a device (/dev/zero) never end
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::data(
            path,
            "is not a regular file (a directory, device, FIFO or socket); the data directory must hold the files themselves",
        ));
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 2];
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    // Put the two sniffed bytes back in front of the rest of the file.
    let whole = Cursor::new(head[..got].to_vec()).chain(BufReader::new(file));
    if head[..got] == GZIP_MAGIC {
        Ok((Box::new(MultiGzDecoder::new(whole)), true))
    } else {
        Ok((Box::new(whole), false))
    }
}

fn decoded(bytes: &[u8]) -> (Box<dyn Read + '_>, bool) {
    if bytes.starts_with(&GZIP_MAGIC) {
        (Box::new(MultiGzDecoder::new(bytes)), true)
    } else {
        (Box::new(bytes), false)
    }
}

/// Encodes images as an uncompressed IDX file (header + bytes).
///
/// Panics if `images.len() != n * rows * cols` or a dimension exceeds
/// `u32::MAX`: both are programming errors, not bad input.
pub fn encode_images(images: &[u8], n: usize, rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(images.len(), n * rows * cols, "encode_images: images.len() != n * rows * cols");
    let mut out = Vec::with_capacity(16 + images.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [n, rows, cols] {
        out.extend_from_slice(&dim_u32(d).to_be_bytes());
    }
    out.extend_from_slice(images);
    out
}

/// Encodes labels as an uncompressed IDX file (header + bytes).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&dim_u32(labels.len()).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn dim_u32(d: usize) -> u32 {
    u32::try_from(d).expect("IDX dimensions are u32; this one does not fit")
}

/// Writes images as a gzip-compressed IDX file. Same contract as
/// [`encode_images`].
pub fn write_images(path: &Path, images: &[u8], n: usize, rows: usize, cols: usize) -> Result<()> {
    write_gzip(path, &encode_images(images, n, rows, cols))
}

/// Writes labels as a gzip-compressed IDX file. The values are not
/// range-checked, so tests can write bad files.
pub fn write_labels(path: &Path, labels: &[u8]) -> Result<()> {
    write_gzip(path, &encode_labels(labels))
}

fn write_gzip(path: &Path, content: &[u8]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    // GzEncoder::new writes mtime 0 and no file name, so the output depends
    // only on the content: regenerating the test subset gives identical bytes.
    let mut encoder = GzEncoder::new(io::BufWriter::new(file), Compression::best());
    encoder.write_all(content).map_err(|e| Error::io(path, e))?;
    let writer = encoder.finish().map_err(|e| Error::io(path, e))?;
    let file = writer.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn decode_images(mut reader: impl Read, gzip: bool, path: &Path) -> Result<Images> {
    let dims = read_header(&mut reader, gzip, path, 3, "images")?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    let expected = checked_size(&dims, path)?;
    let what = format!("{n} images of {rows}x{cols}");
    let bytes = read_data(reader, gzip, path, expected, &what)?;
    Ok(Images { bytes, n: n as usize, rows: rows as usize, cols: cols as usize })
}

fn decode_labels(mut reader: impl Read, gzip: bool, path: &Path) -> Result<Vec<u8>> {
    let dims = read_header(&mut reader, gzip, path, 1, "labels")?;
    let expected = checked_size(&dims, path)?;
    read_data(reader, gzip, path, expected, &format!("{} labels", dims[0]))
}

/// Reads and validates the magic number and the dimensions.
fn read_header(reader: &mut impl Read, gzip: bool, path: &Path, want_dims: u8, kind: &str) -> Result<Vec<u32>> {
    let header_len = 4 + 4 * usize::from(want_dims);
    let mut magic = [0u8; 4];
    read_exact_or_explain(reader, &mut magic, gzip, path, header_len, 0)?;
    let magic_u32 = u32::from_be_bytes(magic);
    let other_kind = if want_dims == 3 { "a labels" } else { "an images" };
    if magic[0] != 0 || magic[1] != 0 {
        let hint = if gzip {
            "" // a gzip file that decompresses to something that is not IDX
        } else {
            " (not gzip either)"
        };
        return Err(Error::data(
            path,
            format!(
                "not an IDX file: wrong magic number 0x{magic_u32:08x}{hint}, expected \
                 0x{:08x} for {kind}; {FIX}",
                if want_dims == 3 { IMAGES_MAGIC } else { LABELS_MAGIC }
            ),
        ));
    }
    if magic[2] != TYPE_U8 {
        return Err(Error::data(
            path,
            format!(
                "wrong element type 0x{:02x} ({}) in the IDX header (magic 0x{magic_u32:08x}), \
                 expected 0x08 (unsigned byte); {FIX}",
                magic[2],
                type_name(magic[2])
            ),
        ));
    }
    if magic[3] != want_dims {
        return Err(Error::data(
            path,
            format!(
                "wrong magic number 0x{magic_u32:08x}: {} dimension(s), expected {want_dims} \
                 (magic 0x{:08x}) for {kind}; is this {other_kind} file? {FIX}",
                magic[3],
                if want_dims == 3 { IMAGES_MAGIC } else { LABELS_MAGIC }
            ),
        ));
    }
    let mut dims = Vec::with_capacity(usize::from(want_dims));
    for i in 0..usize::from(want_dims) {
        let mut d = [0u8; 4];
        read_exact_or_explain(reader, &mut d, gzip, path, header_len, 4 + 4 * i)?;
        dims.push(u32::from_be_bytes(d));
    }
    Ok(dims)
}

fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "not a valid IDX type",
    }
}

/// Size in bytes of the data the header announces, refusing anything above
/// [`MAX_DATA_BYTES`] before a single byte of it is read.
fn checked_size(dims: &[u32], path: &Path) -> Result<u64> {
    // u128: three u32 factors cannot overflow it.
    let size: u128 = dims.iter().map(|&d| u128::from(d)).product();
    if size > u128::from(MAX_DATA_BYTES) {
        let shown: Vec<String> = dims.iter().map(u32::to_string).collect();
        return Err(Error::data(
            path,
            format!(
                "IDX header claims dimensions {} ({size} bytes), more than the 1 GiB limit; \
                 the header is corrupt (Fashion-MNIST is 47 MB at most); {FIX}",
                shown.join(" x ")
            ),
        ));
    }
    Ok(size as u64)
}

/// Reads exactly `expected` bytes and checks that nothing follows.
fn read_data(reader: impl Read, gzip: bool, path: &Path, expected: u64, what: &str) -> Result<Vec<u8>> {
    // No `with_capacity(expected)`: the header is not trusted with memory.
    let mut bytes = Vec::new();
    reader.take(expected + 1).read_to_end(&mut bytes).map_err(|e| read_error(e, gzip, path))?;
    let got = bytes.len() as u64;
    if got < expected {
        return Err(Error::data(
            path,
            format!(
                "truncated data: the header announces {what} ({expected} bytes) but only {got} \
                 bytes follow; the file is incomplete, {FIX}"
            ),
        ));
    }
    if got > expected {
        return Err(Error::data(
            path,
            format!(
                "trailing data: more bytes follow the {what} ({expected} bytes) the header \
                 announces; the file is corrupt, {FIX}"
            ),
        ));
    }
    Ok(bytes)
}

fn read_exact_or_explain(
    reader: &mut impl Read,
    buf: &mut [u8],
    gzip: bool,
    path: &Path,
    header_len: usize,
    offset: usize,
) -> Result<()> {
    let got = read_up_to(reader, buf).map_err(|e| read_error(e, gzip, path))?;
    if got < buf.len() {
        return Err(Error::data(
            path,
            format!(
                "truncated header: the file ends after {} bytes, an IDX header here is \
                 {header_len} bytes; {FIX}",
                offset + got
            ),
        ));
    }
    Ok(())
}

/// Like `read_exact`, but an early end of file is not an error: it returns
/// how many bytes it got, so the caller can say where the file ended.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_error(e: io::Error, gzip: bool, path: &Path) -> Error {
    if gzip {
        // flate2 reports a cut stream as UnexpectedEof and bad data as
        // InvalidInput/InvalidData; for the user both mean the same thing.
        let what = if e.kind() == io::ErrorKind::UnexpectedEof { "truncated gzip data" } else { "corrupt gzip data" };
        Error::data(path, format!("{what} ({e}); the file is damaged, {FIX}"))
    } else {
        Error::io(path, e)
    }
}
