//! Reading a client's request body before an upstream connection is taken for it, as nginx's
//! request buffering does: a client that uploads slowly holds only its own connection, never one
//! of the capped upstream connections every other client needs. A gap between two reads longer
//! than `listen.body_timeout_ms` ends the request (408); a body over
//! `listen.max_request_body_bytes` is refused (413). Small bodies stay in memory; larger ones wait
//! in an unlinked temporary file. A body to be mirrored stays in memory, within the route's
//! `max_body_bytes` and the mirror's global budget.

use crate::mirror::budget::Held;
use crate::upstream::body::{self, FileBody, ProxyBody, ReplayBody};
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Bodies up to this size stay in memory; larger ones go to the spool file.
pub const IN_MEMORY_BYTES: usize = 64 * 1024;

/// The limits every request body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Longest gap between two reads.
    pub idle: Duration,
    /// Largest body.
    pub max: u64,
    /// Where large bodies wait.
    pub spool_dir: PathBuf,
}

/// Where the body is now.
pub enum Stored {
    Memory(Bytes),
    Spooled {
        file: tokio::fs::File,
        len: u64,
    },
    /// The spool file could not be written: what was read, then the rest of the stream.
    Streaming(ProxyBody),
}

impl Stored {
    pub fn into_body(self) -> ProxyBody {
        match self {
            Stored::Memory(b) => body::full(b),
            Stored::Spooled { file, len } => body::boxed(FileBody::new(file, len)),
            Stored::Streaming(b) => b,
        }
    }
}

/// Whether the body can be mirrored.
pub enum Mirroring {
    /// In memory, its bytes held in the mirror's budget until the exchange ends.
    Kept(Held),
    /// Over the route's `max_body_bytes`.
    TooLarge,
    /// The mirror's budget for buffered bodies is spent.
    BuffersFull,
    /// Not asked for.
    No,
}

pub struct ReadBody {
    pub stored: Stored,
    pub mirroring: Mirroring,
}

/// Why the body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no part of the body for {0:?}")]
    Timeout(Duration),
    #[error("the body is over {0} bytes")]
    TooLarge(u64),
    #[error("the client's body failed: {0}")]
    Client(#[from] hyper::Error),
    #[error("the spool file failed: {0}")]
    Spool(std::io::Error),
}

/// A temporary file no other process can open, deleted when closed.
async fn spool_file(dir: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    let dir = dir.to_path_buf();
    let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
        .await
        .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// Reads `body` whole (see the module). `mirror`: the route's `max_body_bytes` and an empty
/// hold on the mirror's budget, when the request would be mirrored.
pub async fn read(
    body: Incoming,
    declared: Option<u64>,
    limits: &BodyLimits,
    mirror: Option<(usize, Held)>,
) -> Result<ReadBody, BodyError> {
    let mut want = mirror;
    let mut mirroring = Mirroring::No;
    if body.is_end_stream() {
        return Ok(ReadBody {
            stored: Stored::Memory(Bytes::new()),
            mirroring: want.map_or(Mirroring::No, |(_, held)| Mirroring::Kept(held)),
        });
    }
    if declared.is_some_and(|n| n > limits.max) {
        return Err(BodyError::TooLarge(limits.max));
    }
    if let Some((cap, _)) = &want {
        if declared.is_some_and(|n| n > *cap as u64) {
            want = None;
            mirroring = Mirroring::TooLarge;
        }
    }
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    let mut spool: Option<tokio::fs::File> = None;
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout(limits.idle)),
            Ok(None) => break,
            Ok(Some(frame)) => frame?,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        len += data.len() as u64;
        if len > limits.max {
            return Err(BodyError::TooLarge(limits.max));
        }
        if let Some((cap, held)) = &mut want {
            if len > *cap as u64 {
                want = None;
                mirroring = Mirroring::TooLarge;
            } else if !held.grow(data.len()) {
                want = None;
                mirroring = Mirroring::BuffersFull;
            }
        }
        if let Some(file) = &mut spool {
            file.write_all(&data).await.map_err(BodyError::Spool)?;
            continue;
        }
        chunks.push(data);
        if want.is_none() && len > IN_MEMORY_BYTES as u64 {
            match spool_file(&limits.spool_dir).await {
                Ok(mut file) => {
                    for c in chunks.drain(..) {
                        file.write_all(&c).await.map_err(BodyError::Spool)?;
                    }
                    spool = Some(file);
                }
                Err(e) => {
                    // No spool: send what was read and stream the rest, as without buffering.
                    tracing::warn!(error = %e, "no request body spool file; streaming the body");
                    return Ok(ReadBody {
                        stored: Stored::Streaming(body::boxed(ReplayBody::new(
                            chunks, body, declared,
                        ))),
                        mirroring,
                    });
                }
            }
        }
    }
    let stored = match spool {
        Some(mut file) => {
            let rewound = async {
                file.flush().await?;
                file.seek(std::io::SeekFrom::Start(0)).await?;
                Ok::<_, std::io::Error>(file)
            };
            let file = rewound.await.map_err(BodyError::Spool)?;
            Stored::Spooled { file, len }
        }
        None => Stored::Memory(body::concat(chunks)),
    };
    Ok(ReadBody {
        stored,
        mirroring: want.map_or(mirroring, |(_, held)| Mirroring::Kept(held)),
    })
}
