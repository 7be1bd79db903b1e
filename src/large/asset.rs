//! File-backed assets: a read-only map of a file, advised for streaming.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};

/// An asset file mapped read-only into memory, unmapped on drop.
///
/// The pages are read from the file lazily on first access; [`open`](Self::open) advises
/// the kernel that the asset will be read soon (`MADV_WILLNEED`, starting read-ahead) and
/// front to back (`MADV_SEQUENTIAL`, aggressive read-ahead, early reclaim behind).
///
/// Invariant: `map` is `None` exactly when the file was empty (a zero-length mapping does
/// not exist), and then [`as_bytes`](Self::as_bytes) is the empty slice.
///
/// # Examples
///
/// ```
/// use tidyheap::large::MappedAsset;
/// let path = std::env::temp_dir().join(format!("tidyheap-doc-asset-{}", std::process::id()));
/// std::fs::write(&path, b"mesh data")?;
/// // SAFETY: the file is ours; nothing modifies or truncates it while it is mapped.
/// let asset = unsafe { MappedAsset::open(&path)? };
/// assert_eq!(asset.as_bytes(), b"mesh data");
/// assert_eq!(asset.path(), path);
/// drop(asset);
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct MappedAsset {
    map: Option<Mmap>,
    path: PathBuf,
}

impl MappedAsset {
    /// Maps the file at `path` read-only and advises sequential, soon-needed access.
    ///
    /// # Safety
    ///
    /// The file must not be truncated or modified (by this or any other process) while
    /// the `MappedAsset` lives: the slice from [`as_bytes`](Self::as_bytes) would change
    /// under shared references, and reading pages cut off by a truncation raises
    /// `SIGBUS`. Asset files an engine ships and only reads satisfy this.
    ///
    /// # Errors
    ///
    /// An [`io::Error`] of the original kind whose message starts with the path, when the
    /// file cannot be opened or its size read, is not a regular file
    /// ([`io::ErrorKind::InvalidInput`]), or cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::large::MappedAsset;
    /// // SAFETY: a failed open maps nothing.
    /// let err = unsafe { MappedAsset::open("/no/such/asset.bin") }.unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    /// assert!(err.to_string().starts_with("/no/such/asset.bin: "));
    /// ```
    pub unsafe fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(named)?;
        let meta = file.metadata().map_err(named)?;
        if !meta.is_file() {
            return Err(named(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let len = meta.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the caller guarantees the file is neither modified nor truncated
            // while this mapping lives (it lives exactly as long as `self`).
            let map = unsafe { Mmap::map(&file) }.map_err(named)?;
            // Advice only tunes read-ahead; a kernel that rejects it serves the same bytes.
            let _hint_only = map.advise(Advice::WillNeed);
            let _hint_only = map.advise(Advice::Sequential);
            Some(map)
        };
        Ok(Self {
            map,
            path: path.to_path_buf(),
        })
    }

    /// The file's contents.
    pub fn as_bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The file's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_none()
    }

    /// The path the asset was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for MappedAsset {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for MappedAsset {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for MappedAsset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedAsset")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<MappedAsset>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tidyheap-unit-{tag}-{}", std::process::id()))
    }

    #[test]
    fn empty_file_maps_to_empty_slice() {
        let path = temp_path("empty");
        std::fs::write(&path, b"").unwrap();
        // SAFETY: the file is ours and unchanged while mapped.
        let asset = unsafe { MappedAsset::open(&path) }.unwrap();
        assert!(asset.is_empty());
        assert_eq!((asset.len(), asset.as_bytes()), (0, &[][..]));
        drop(asset);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn directory_error_names_the_path() {
        let dir = std::env::temp_dir();
        // SAFETY: a directory is refused before anything is mapped.
        let err = unsafe { MappedAsset::open(&dir) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().starts_with(&dir.display().to_string()),
            "{err}"
        );
    }
}
