//! The decoy site: answers every request that is not a tunnel exactly as a
//! stock nginx serving static files would (the "nginx" profile).
//!
//! Status codes, error pages, header names, values and their order, ETag
//! format, conditional and range requests follow nginx 1.22 with
//! `server_tokens off`, `default_type application/octet-stream` and an
//! `add_header Alt-Svc` line; the tests compare against a real nginx.
//!
//! Responses carry a `connection: keep-alive` header in nginx's position;
//! the HTTP/1.1 layer keeps it (or turns it into `close`) and the HTTP/2 and
//! HTTP/3 layers drop it, as nginx does.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::upstream::Upstream;

/// A finished answer to one request: status, ordered headers, body.
pub type SiteResponse = Response<Body>;

/// Files larger than this are not read whole: their bytes are read from the
/// open file piece by piece as the client takes them (nginx's `sendfile`),
/// so a large download holds two pieces of [`FILE_CHUNK`] (the one going
/// out and the next), not the file.
pub const STREAM_FILES_OVER: u64 = 1024 * 1024;

/// What a streamed file is read in.
pub const FILE_CHUNK: usize = 128 * 1024;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// All of it, in memory.
    Full(Bytes),
    /// Ranges of an open file, with the bytes between them (the parts of a
    /// `multipart/byteranges` body), read as they are sent.
    File(FileBody),
    /// The rest of an origin's long answer, read as it is sent
    /// (`--upstream`).
    Origin(Box<crate::upstream::OriginBody>),
}

/// See [`Body::File`].
#[derive(Debug)]
pub struct FileBody {
    file: std::sync::Arc<std::fs::File>,
    pieces: std::collections::VecDeque<Piece>,
}

#[derive(Debug)]
enum Piece {
    Bytes(Bytes),
    /// Bytes `start..end` of the file.
    Range(u64, u64),
}

impl Body {
    /// Its length, unless it is an origin's answer still arriving.
    pub fn len(&self) -> Option<u64> {
        match self {
            Body::Full(b) => Some(b.len() as u64),
            Body::File(f) => Some(
                f.pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Bytes(b) => b.len() as u64,
                        Piece::Range(start, end) => end - start,
                    })
                    .sum(),
            ),
            Body::Origin(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The next bytes to send (at most [`FILE_CHUNK`] of a file), `None`
    /// once all are out. A file that shrank since it was opened is an
    /// error: the connection is cut, as nginx cuts it.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let f = match self {
            Body::Full(b) if b.is_empty() => return Ok(None),
            Body::Full(b) => return Ok(Some(std::mem::take(b))),
            Body::File(f) => f,
            Body::Origin(o) => return o.next_chunk().await,
        };
        loop {
            match f.pieces.pop_front() {
                None => return Ok(None),
                Some(Piece::Bytes(b)) if b.is_empty() => continue,
                Some(Piece::Bytes(b)) => return Ok(Some(b)),
                Some(Piece::Range(start, end)) if start >= end => continue,
                Some(Piece::Range(start, end)) => {
                    let n = (end - start).min(FILE_CHUNK as u64);
                    // What the page cache holds is read here, without
                    // blocking (as nginx reads in its event loop); the rest
                    // on the blocking pool.
                    let mut buf = vec![0u8; n as usize];
                    let cached = rustix::io::preadv2(
                        &*f.file,
                        &mut [std::io::IoSliceMut::new(&mut buf)],
                        start,
                        rustix::io::ReadWriteFlags::NOWAIT,
                    );
                    if let Ok(got @ 1..) = cached {
                        if start + (got as u64) < end {
                            f.pieces.push_front(Piece::Range(start + got as u64, end));
                        }
                        buf.truncate(got);
                        return Ok(Some(Bytes::from(buf)));
                    }
                    if start + n < end {
                        f.pieces.push_front(Piece::Range(start + n, end));
                    }
                    let file = f.file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        file.read_exact_at(&mut buf, start)
                            .map(|()| Bytes::from(buf))
                    });
                    return match read.await {
                        Ok(Ok(chunk)) => Ok(Some(chunk)),
                        Ok(Err(e)) => Err(std::io::Error::new(
                            e.kind(),
                            format!("file changed while it was sent: {e}"),
                        )),
                        Err(e) => Err(std::io::Error::other(e)),
                    };
                }
            }
        }
    }

    /// The whole body in memory, for tests.
    #[cfg(test)]
    pub(crate) async fn collect(mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(b)
    }
}

/// A file's content as the site found it: read whole, or open.
#[derive(Debug)]
enum Content {
    Memory(Bytes),
    Open {
        file: std::sync::Arc<std::fs::File>,
        len: u64,
    },
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Memory(b) => b.len() as u64,
            Content::Open { len, .. } => *len,
        }
    }

    /// Bytes `start..end`.
    fn slice(&self, start: u64, end: u64) -> Body {
        match self {
            Content::Memory(b) => Body::Full(b.slice(start as usize..end as usize)),
            Content::Open { file, .. } => Body::File(FileBody {
                file: file.clone(),
                pieces: [Piece::Range(start, end)].into(),
            }),
        }
    }
}

/// nginx's `client_max_body_size`: a longer request body gets 413.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Files up to this size are read on the serving task itself.
const INLINE_READ_MAX: u64 = 256 * 1024;

/// Files up to this size are kept in memory between requests ...
const CACHE_FILE_MAX: u64 = 64 * 1024;
/// ... up to this many of them.
const CACHE_ENTRIES: usize = 256;

/// Small files of a site directory, kept while their `stat` stays the same
/// (size, inode, modification and change times, so an edit, a replacement
/// or a `chmod` is seen by the next request): a request then costs one
/// `stat` instead of an open, read and close.
#[derive(Debug, Default)]
struct FileCache {
    files: std::sync::RwLock<HashMap<PathBuf, CachedFile>>,
}

#[derive(Debug, Clone)]
struct CachedFile {
    stamp: Stamp,
    body: Bytes,
}

/// What must not change for a cached copy to stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl FileCache {
    fn get(&self, path: &Path, stamp: Stamp) -> Option<Bytes> {
        let files = self
            .files
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        files
            .get(path)
            .filter(|f| f.stamp == stamp)
            .map(|f| f.body.clone())
    }

    /// Caches `body` unless the file is large or was changed so recently
    /// that another change within the same timestamp tick could go unseen
    /// (the "racy file" rule).
    fn put(&self, path: &Path, stamp: Stamp, now: SystemTime, body: &Bytes) {
        let changed = UNIX_EPOCH
            + Duration::from_secs(u64::try_from(stamp.ctime.0.max(stamp.mtime.0)).unwrap_or(0));
        let settled = now
            .duration_since(changed)
            .is_ok_and(|age| age >= Duration::from_secs(2));
        if !settled || stamp.len > CACHE_FILE_MAX || body.len() as u64 != stamp.len {
            return;
        }
        let mut files = self
            .files
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if files.len() >= CACHE_ENTRIES && !files.contains_key(path) {
            // Bounded: when full, start over rather than track recency.
            files.clear();
        }
        files.insert(
            path.to_path_buf(),
            CachedFile {
                stamp,
                body: body.clone(),
            },
        );
    }
}

/// What the site needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct SiteRequest<'a> {
    pub method: &'a Method,
    /// Path and query as sent (`/a/b?x=1`).
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Host the client named (`Host` or `:authority`), for redirects.
    pub host: Option<&'a str>,
    /// The request body, when the site reads bodies ([`Site::reads_bodies`]);
    /// empty otherwise.
    pub body: &'a [u8],
}

/// Where the site's files come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The small site compiled into the binary.
    Builtin,
    /// A directory on disk.
    Dir(PathBuf),
    /// A reverse proxy to an origin web server.
    Upstream(Upstream),
}

#[derive(Debug)]
enum Lookup {
    File { body: Content, mtime: SystemTime },
    Dir,
    Missing,
    Forbidden,
}

/// The decoy site for one listener.
#[derive(Debug, Clone)]
pub struct Site {
    source: Source,
    builtin: HashMap<&'static str, &'static [u8]>,
    builtin_mtime: SystemTime,
    cache: std::sync::Arc<FileCache>,
    /// nginx numbers multipart boundaries from 1, per worker.
    boundaries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `Alt-Svc` value added to successful responses, as `add_header` does.
    alt_svc: Option<HeaderValue>,
    advertise_h3: bool,
    /// Scheme and port for absolute redirects (`Location`).
    scheme: &'static str,
    port: u16,
}

macro_rules! builtin_files {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_bytes!(concat!("../site", $path)) as &'static [u8])),*]
    };
}

impl Site {
    /// A site from `source`, served on `port` over https; `advertise_h3`
    /// adds an `Alt-Svc` for HTTP/3 on the same port. Port 0 means "the
    /// port the listener gets", filled in by [`Site::set_port`].
    pub fn new(source: Source, port: u16, advertise_h3: bool) -> Self {
        let builtin = builtin_files!(
            "/index.html",
            "/about.html",
            "/visit.html",
            "/style.css",
            "/robots.txt",
            "/favicon.ico",
            "/posts/celadon-crawling.html",
            "/posts/firing-log-winter.html",
            "/posts/reclaiming-clay.html",
        )
        .into_iter()
        .collect();
        let mut site = Self {
            source,
            builtin,
            // A fixed, plausible publication time for the built-in pages.
            builtin_mtime: UNIX_EPOCH + Duration::from_secs(1_773_482_112),
            cache: std::sync::Arc::default(),
            boundaries: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
            alt_svc: None,
            advertise_h3,
            scheme: "https",
            port: 0,
        };
        site.set_port(port);
        site
    }

    /// The port the site is served on (for redirects and `Alt-Svc`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set_port(&mut self, port: u16) {
        self.port = port;
        self.alt_svc = if self.advertise_h3 && port != 0 {
            HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok()
        } else {
            None
        };
    }

    /// Whether requests are answered by an origin, which gets their bodies
    /// (up to [`MAX_REQUEST_BODY`]); a static site discards them.
    pub fn reads_bodies(&self) -> bool {
        matches!(self.source, Source::Upstream(_))
    }

    /// Answers one request. Never fails: every problem is an HTTP status.
    pub async fn respond(&self, req: SiteRequest<'_>) -> SiteResponse {
        let path = req.target.split(['?', '#']).next().unwrap_or("/");
        let Some(rel) = normalize(path) else {
            return self.error(StatusCode::BAD_REQUEST);
        };
        if let Source::Upstream(up) = &self.source {
            return match up
                .forward(req.method, req.target, req.headers, req.body)
                .await
            {
                Ok(resp) => up.dress(resp, self.alt_svc.as_ref(), |path| {
                    self.absolute_url(req.host, path)
                }),
                Err(failure) => self.error(failure.status()),
            };
        }
        // nginx's static handler refuses these methods before looking.
        let method = req.method;
        let get_like = method == Method::GET || method == Method::HEAD;
        if !get_like && method != Method::POST {
            return self.error(StatusCode::METHOD_NOT_ALLOWED);
        }
        let lookup_rel = if rel.ends_with('/') {
            format!("{rel}index.html")
        } else {
            rel.clone()
        };
        match self.find(&lookup_rel).await {
            Lookup::File { body, mtime } => {
                if !get_like {
                    return self.error(StatusCode::METHOD_NOT_ALLOWED);
                }
                self.file(req, &lookup_rel, body, mtime)
            }
            Lookup::Dir if !rel.ends_with('/') => self.redirect_to_dir(req, path),
            Lookup::Dir | Lookup::Forbidden => self.error(StatusCode::FORBIDDEN),
            Lookup::Missing if rel.ends_with('/') => {
                // A directory without an index is forbidden; a missing one is not found.
                match self.find(&rel).await {
                    Lookup::Dir => self.error(StatusCode::FORBIDDEN),
                    _ => self.error(StatusCode::NOT_FOUND),
                }
            }
            Lookup::Missing => self.error(StatusCode::NOT_FOUND),
        }
    }

    async fn find(&self, rel: &str) -> Lookup {
        match &self.source {
            Source::Builtin => {
                if let Some(body) = self.builtin.get(rel) {
                    return Lookup::File {
                        body: Content::Memory(Bytes::from_static(body)),
                        mtime: self.builtin_mtime,
                    };
                }
                let dir = if rel.ends_with('/') {
                    rel.to_string()
                } else {
                    format!("{rel}/")
                };
                if rel == "/" || self.builtin.keys().any(|k| k.starts_with(&dir)) {
                    Lookup::Dir
                } else {
                    Lookup::Missing
                }
            }
            Source::Upstream(_) => Lookup::Missing,
            Source::Dir(root) => {
                let full = root.join(rel.trim_start_matches('/'));
                // Like nginx, stat and read small files inline: from the page
                // cache that takes microseconds, far less than two hops
                // through the blocking thread pool. Larger files go there.
                let meta = match std::fs::metadata(&full) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Lookup::Forbidden
                    }
                    Err(_) => return Lookup::Missing,
                };
                if meta.is_dir() {
                    return Lookup::Dir;
                }
                if !meta.is_file() {
                    return Lookup::Forbidden;
                }
                if meta.len() > STREAM_FILES_OVER {
                    return open_large(full).await;
                }
                let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
                let stamp = Stamp::of(&meta);
                if let Some(body) = self.cache.get(&full, stamp) {
                    return Lookup::File {
                        body: Content::Memory(body),
                        mtime,
                    };
                }
                let read = if meta.len() <= INLINE_READ_MAX {
                    std::fs::read(&full)
                } else {
                    tokio::fs::read(&full).await
                };
                match read {
                    Ok(body) => {
                        let body = Bytes::from(body);
                        self.cache.put(&full, stamp, SystemTime::now(), &body);
                        Lookup::File {
                            body: Content::Memory(body),
                            mtime,
                        }
                    }
                    Err(_) => Lookup::Forbidden,
                }
            }
        }
    }

    fn file(
        &self,
        req: SiteRequest<'_>,
        rel: &str,
        content: Content,
        mtime: SystemTime,
    ) -> SiteResponse {
        let secs = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let len = content.len();
        let etag = format!("\"{secs:x}-{len:x}\"");
        let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));

        if not_modified(req.headers, &etag, &last_modified) {
            let mut h = base_headers();
            put(&mut h, header::LAST_MODIFIED, &last_modified);
            put_connection(&mut h);
            put(&mut h, header::ETAG, &etag);
            self.put_alt_svc(&mut h);
            return build(StatusCode::NOT_MODIFIED, h, Bytes::new());
        }

        let range = match req.headers.get(header::RANGE) {
            Some(v) if if_range_ok(req.headers, &etag, &last_modified) => parse_range(v, len),
            _ => RangeAnswer::Full,
        };
        let (status, body, content_range) = match range {
            RangeAnswer::Full => (StatusCode::OK, content.slice(0, len), None),
            RangeAnswer::Parts(parts) if parts.len() == 1 => {
                let (start, end) = parts[0];
                (
                    StatusCode::PARTIAL_CONTENT,
                    content.slice(start, end),
                    Some(format!("bytes {start}-{}/{len}", end - 1)),
                )
            }
            RangeAnswer::Parts(parts) => {
                return self.multipart(rel, &content, &parts, &etag, &last_modified);
            }
            RangeAnswer::Unsatisfiable => {
                let mut r = self.error(StatusCode::RANGE_NOT_SATISFIABLE);
                let h = r.headers_mut();
                self.put_alt_svc(h);
                put(h, header::CONTENT_RANGE, &format!("bytes */{len}"));
                return r;
            }
        };
        let mut h = base_headers();
        put(&mut h, header::CONTENT_TYPE, content_type(rel));
        put(
            &mut h,
            header::CONTENT_LENGTH,
            &body.len().unwrap_or_default().to_string(),
        );
        put(&mut h, header::LAST_MODIFIED, &last_modified);
        put_connection(&mut h);
        put(&mut h, header::ETAG, &etag);
        self.put_alt_svc(&mut h);
        match content_range {
            Some(cr) => put(&mut h, header::CONTENT_RANGE, &cr),
            None => put(&mut h, header::ACCEPT_RANGES, "bytes"),
        }
        build(status, h, body)
    }

    /// Several ranges: a `multipart/byteranges` body spelled as nginx
    /// spells it, with its 20-digit counter as the boundary.
    fn multipart(
        &self,
        rel: &str,
        content: &Content,
        parts: &[(u64, u64)],
        etag: &str,
        last_modified: &str,
    ) -> SiteResponse {
        let boundary = self
            .boundaries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let boundary = format!("{boundary:020}");
        let len = content.len();
        let ct = content_type(rel);
        let mut pieces = std::collections::VecDeque::new();
        for &(start, end) in parts {
            pieces.push_back(Piece::Bytes(Bytes::from(format!(
                "\r\n--{boundary}\r\nContent-Type: {ct}\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
                end - 1
            ))));
            pieces.push_back(Piece::Range(start, end));
        }
        pieces.push_back(Piece::Bytes(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
        let body = match content {
            Content::Memory(bytes) => {
                let mut out = Vec::new();
                for piece in pieces {
                    match piece {
                        Piece::Bytes(b) => out.extend_from_slice(&b),
                        Piece::Range(start, end) => {
                            out.extend_from_slice(&bytes[start as usize..end as usize])
                        }
                    }
                }
                Body::Full(Bytes::from(out))
            }
            Content::Open { file, .. } => Body::File(FileBody {
                file: file.clone(),
                pieces,
            }),
        };
        let mut h = base_headers();
        put(
            &mut h,
            header::CONTENT_TYPE,
            &format!("multipart/byteranges; boundary={boundary}"),
        );
        put(
            &mut h,
            header::CONTENT_LENGTH,
            &body.len().unwrap_or_default().to_string(),
        );
        put(&mut h, header::LAST_MODIFIED, last_modified);
        put_connection(&mut h);
        put(&mut h, header::ETAG, etag);
        self.put_alt_svc(&mut h);
        build(StatusCode::PARTIAL_CONTENT, h, body)
    }

    /// `path` on this site as nginx writes it in a redirect: the name the
    /// client asked for, the listening port unless it is the default.
    fn absolute_url(&self, host: Option<&str>, path: &str) -> String {
        let host = host
            .map(|h| h.rsplit_once(':').map(|(n, _)| n).unwrap_or(h))
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost");
        let port = if self.port == 443 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!("{}://{}{}{}", self.scheme, host, port, path)
    }

    fn redirect_to_dir(&self, req: SiteRequest<'_>, path: &str) -> SiteResponse {
        let mut location = self.absolute_url(req.host, &format!("{path}/"));
        if let Some((_, q)) = req.target.split_once('?') {
            location.push('?');
            location.push_str(q);
        }
        let body = error_body(StatusCode::MOVED_PERMANENTLY);
        let mut h = base_headers();
        put(&mut h, header::CONTENT_TYPE, "text/html");
        put(&mut h, header::CONTENT_LENGTH, &body.len().to_string());
        put(&mut h, header::LOCATION, &location);
        put_connection(&mut h);
        self.put_alt_svc(&mut h);
        build(StatusCode::MOVED_PERMANENTLY, h, body)
    }

    /// nginx's built-in error page for `status`.
    pub fn error(&self, status: StatusCode) -> SiteResponse {
        error_response(status)
    }

    fn put_alt_svc(&self, h: &mut HeaderMap) {
        if let Some(v) = &self.alt_svc {
            h.append(HeaderName::from_static("alt-svc"), v.clone());
        }
    }
}

/// A large file of a site directory, opened for reading in pieces; its
/// length and time are the open file's, so the answer describes the bytes
/// that will be sent even if the path is replaced meanwhile.
async fn open_large(path: PathBuf) -> Lookup {
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        Ok::<_, std::io::Error>((file, meta))
    })
    .await;
    match opened {
        Ok(Ok((file, meta))) if meta.is_file() => Lookup::File {
            mtime: meta.modified().unwrap_or(UNIX_EPOCH),
            body: Content::Open {
                file: std::sync::Arc::new(file),
                len: meta.len(),
            },
        },
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => Lookup::Forbidden,
    }
}

/// nginx's error page for `status`, without a site (used for protocol errors).
pub fn error_response(status: StatusCode) -> SiteResponse {
    let body = error_body(status);
    let mut h = base_headers();
    put(&mut h, header::CONTENT_TYPE, "text/html");
    put(&mut h, header::CONTENT_LENGTH, &body.len().to_string());
    if closes_connection(status) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else {
        put_connection(&mut h);
    }
    build(status, h, body)
}

/// nginx's answer to a header line or head that does not fit its buffers.
pub fn header_too_large_response() -> SiteResponse {
    detailed_bad_request("Request Header Or Cookie Too Large")
}

/// nginx's answer to a plain-HTTP request sent to its TLS port.
pub fn plain_http_response() -> SiteResponse {
    detailed_bad_request("The plain HTTP request was sent to HTTPS port")
}

/// nginx's 400 page with a detail line, e.g. for an oversized header.
fn detailed_bad_request(detail: &str) -> SiteResponse {
    let body = Bytes::from(format!(
        "<html>\r\n<head><title>400 {detail}</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>{detail}</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ));
    let mut h = base_headers();
    put(&mut h, header::CONTENT_TYPE, "text/html");
    put(&mut h, header::CONTENT_LENGTH, &body.len().to_string());
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    build(StatusCode::BAD_REQUEST, h, body)
}

/// Errors after which nginx turns keep-alive off (its special response
/// handler), so an HTTP/1.1 connection closes after the answer.
fn closes_connection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 414 | 500 | 501 | 505)
}

/// The reason phrase nginx uses (some differ from the RFC's).
pub fn reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        405 => "Not Allowed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        505 => "HTTP Version Not Supported",
        416 => "Requested Range Not Satisfiable",
        _ => status.canonical_reason().unwrap_or("Unknown"),
    }
}

fn error_body(status: StatusCode) -> Bytes {
    let title = format!("{} {}", status.as_u16(), reason(status));
    Bytes::from(format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ))
}

fn base_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(10);
    h.insert(header::SERVER, HeaderValue::from_static("nginx"));
    h.insert(header::DATE, http_date_now());
    h
}

/// The current time as a `Date` value, formatted once per second per
/// thread (as nginx caches its time strings).
pub(crate) fn http_date_now() -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((at, v)) if *at == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                *c = Some((secs, v.clone()));
                v
            }
        }
    })
}

fn put_connection(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
}

fn put(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.append(name, v);
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: impl Into<Body>) -> SiteResponse {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Percent-decodes and normalises a request path the way nginx does:
/// `None` (400) when it is not absolute or climbs above the root.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    if decoded.contains('\0') {
        return None;
    }
    let trailing = decoded.ends_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in Path::new(&decoded).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::Prefix(_) => return None,
        }
    }
    let mut out = String::from("/");
    out.push_str(&parts.join("/"));
    if trailing && !parts.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn not_modified(h: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    if let Some(inm) = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag));
    }
    // nginx's default `if_modified_since exact`.
    h.get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ims| ims == last_modified)
}

fn if_range_ok(h: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    match h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v == etag || v == last_modified,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    Full,
    /// One or more ranges, `start..end` (end exclusive), in request order.
    Parts(Vec<(u64, u64)>),
    Unsatisfiable,
}

/// Parses `Range` exactly as nginx's range filter does: `bytes=` in any
/// case, spaces around numbers allowed, anything malformed is a 416,
/// ranges past the end are dropped (none left is a 416), and ranges that
/// add up to more than the file get the whole file. Overlapping ranges are
/// not merged.
fn parse_range(v: &HeaderValue, len: u64) -> RangeAnswer {
    let raw = v.as_bytes();
    if raw.len() < 7 || !raw[..6].eq_ignore_ascii_case(b"bytes=") {
        return RangeAnswer::Full;
    }
    let p = &raw[6..];
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while p.get(*i) == Some(&b' ') {
            *i += 1;
        }
    };
    let number = |i: &mut usize| -> Option<u64> {
        if !p.get(*i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let mut n: u64 = 0;
        while let Some(d) = p.get(*i).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            if n > i64::MAX as u64 {
                return None;
            }
            *i += 1;
        }
        Some(n)
    };
    let mut parts = Vec::new();
    let mut size: u64 = 0;
    loop {
        skip_spaces(&mut i);
        let (start, end) = if p.get(i) != Some(&b'-') {
            let Some(start) = number(&mut i) else {
                return RangeAnswer::Unsatisfiable;
            };
            skip_spaces(&mut i);
            if p.get(i) != Some(&b'-') {
                return RangeAnswer::Unsatisfiable;
            }
            i += 1;
            skip_spaces(&mut i);
            if matches!(p.get(i), None | Some(b',')) {
                (start, len)
            } else {
                let Some(end) = number(&mut i) else {
                    return RangeAnswer::Unsatisfiable;
                };
                skip_spaces(&mut i);
                if !matches!(p.get(i), None | Some(b',')) {
                    return RangeAnswer::Unsatisfiable;
                }
                (start, if end >= len { len } else { end + 1 })
            }
        } else {
            i += 1;
            let Some(suffix) = number(&mut i) else {
                return RangeAnswer::Unsatisfiable;
            };
            skip_spaces(&mut i);
            if !matches!(p.get(i), None | Some(b',')) {
                return RangeAnswer::Unsatisfiable;
            }
            (len.saturating_sub(suffix), len)
        };
        if start < end {
            parts.push((start, end));
            size = size.saturating_add(end - start);
        } else if start == 0 {
            return RangeAnswer::Full;
        }
        if p.get(i) != Some(&b',') {
            break;
        }
        i += 1;
    }
    if parts.is_empty() {
        RangeAnswer::Unsatisfiable
    } else if size > len {
        RangeAnswer::Full
    } else {
        RangeAnswer::Parts(parts)
    }
}

/// nginx's mime.types for the extensions a small site uses.
fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "xml" => "text/xml",
        "txt" => "text/plain",
        "js" => "application/javascript",
        "json" => "application/json",
        "gif" => "image/gif",
        "jpeg" | "jpg" => "image/jpeg",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "svg" | "svgz" => "image/svg+xml",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "wasm" => "application/wasm",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "rss" => "application/rss+xml",
        "atom" => "application/atom+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(site: &Site, target: &str, headers: HeaderMap) -> SiteResponse {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(site.respond(SiteRequest {
            method: &Method::GET,
            target,
            headers: &headers,
            host: Some("example.org:8443"),
            body: b"",
        }))
    }

    /// A site directory with one large file of known bytes.
    fn large_file_site() -> (tempfile::TempDir, Site, Vec<u8>) {
        let dir = tempfile::tempdir().expect("dir");
        let content: Vec<u8> = (0..3 * 1024 * 1024 + 17)
            .map(|i: u32| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("big.bin"), &content).expect("write");
        let site = Site::new(Source::Dir(dir.path().to_path_buf()), 8443, false);
        (dir, site, content)
    }

    fn collect(body: Body) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(body.collect()).expect("body")
    }

    fn range(spec: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(spec));
        h
    }

    #[test]
    fn a_large_file_is_sent_from_the_open_file_in_pieces() {
        let (_dir, site, content) = large_file_site();
        let r = get(&site, "/big.bin", HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            content.len().to_string().as_str()
        );
        assert_eq!(r.headers()[header::ACCEPT_RANGES], "bytes");
        assert!(matches!(r.body(), Body::File(_)), "not read whole");
        assert_eq!(r.body().len(), Some(content.len() as u64));
        assert!(collect(r.into_body()) == content, "byte-exact");

        let r = get(&site, "/big.bin", range("bytes=1048570-2097160"));
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes 1048570-2097160/{}", content.len()).as_str()
        );
        assert!(collect(r.into_body()) == content[1048570..=2097160]);

        // Several ranges: the same multipart body a small file gets.
        let r = get(&site, "/big.bin", range("bytes=0-4,3000000-3000004"));
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .to_string();
        let boundary = ct.rsplit_once("boundary=").expect("boundary").1.to_string();
        let declared: u64 = r.headers()[header::CONTENT_LENGTH]
            .to_str()
            .expect("len")
            .parse()
            .expect("number");
        let body = collect(r.into_body());
        let len = content.len();
        let mut want = Vec::new();
        for (start, end) in [(0, 5), (3_000_000, 3_000_005)] {
            want.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
                    end - 1
                )
                .as_bytes(),
            );
            want.extend_from_slice(&content[start..end]);
        }
        want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert!(body == want, "multipart body");
        assert_eq!(declared, body.len() as u64);
    }

    #[test]
    fn a_large_file_cut_short_while_sent_ends_the_body_with_an_error() {
        let (dir, site, _) = large_file_site();
        let r = get(&site, "/big.bin", HeaderMap::new());
        // Truncated after the answer's head was decided.
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("big.bin"))
            .expect("open")
            .set_len(1000)
            .expect("truncate");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let err = rt.block_on(r.into_body().collect()).expect_err("cut short");
        assert!(
            err.to_string().contains("file changed while it was sent"),
            "{err}"
        );
    }

    #[test]
    fn file_cache_serves_only_settled_unchanged_files() {
        let cache = FileCache::default();
        let path = Path::new("/site/a.html");
        let stamp = Stamp {
            len: 5,
            ino: 7,
            mtime: (1_000, 0),
            ctime: (1_000, 0),
        };
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let body = Bytes::from_static(b"hello");
        // Changed a second ago: a change in the same tick could be missed.
        cache.put(path, stamp, at(1_001), &body);
        assert_eq!(cache.get(path, stamp), None);
        cache.put(path, stamp, at(1_010), &body);
        assert_eq!(cache.get(path, stamp), Some(body.clone()));
        for changed in [
            Stamp { len: 6, ..stamp },
            Stamp { ino: 8, ..stamp },
            Stamp {
                mtime: (1_000, 1),
                ..stamp
            },
            Stamp {
                ctime: (1_020, 0),
                ..stamp
            },
        ] {
            assert_eq!(cache.get(path, changed), None, "{changed:?}");
        }
        // A body that does not match its stat is never kept.
        cache.put(
            Path::new("/site/b"),
            stamp,
            at(1_010),
            &Bytes::from_static(b"x"),
        );
        assert_eq!(cache.get(Path::new("/site/b"), stamp), None);
        // Bounded.
        for i in 0..(CACHE_ENTRIES as u64 + 10) {
            cache.put(Path::new(&format!("/site/{i}")), stamp, at(1_010), &body);
        }
        assert!(cache.files.read().expect("lock").len() <= CACHE_ENTRIES);
    }

    fn names(r: &SiteResponse) -> Vec<&str> {
        r.headers().keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn headers_come_in_nginx_order() {
        let site = Site::new(Source::Builtin, 8443, true);
        let r = get(&site, "/", HeaderMap::new());
        assert_eq!(r.status(), 200);
        assert_eq!(
            names(&r),
            [
                "server",
                "date",
                "content-type",
                "content-length",
                "last-modified",
                "connection",
                "etag",
                "alt-svc",
                "accept-ranges"
            ]
        );
        let r = get(&site, "/missing", HeaderMap::new());
        assert_eq!(r.status(), 404);
        assert_eq!(
            names(&r),
            [
                "server",
                "date",
                "content-type",
                "content-length",
                "connection"
            ]
        );
        assert_eq!(r.body().len(), Some(146));
    }

    #[test]
    fn conditional_range_and_redirect() {
        let site = Site::new(Source::Builtin, 8443, false);
        let etag = get(&site, "/style.css", HeaderMap::new()).headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(get(&site, "/style.css", h).status(), 304);
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        let r = get(&site, "/style.css", h);
        assert_eq!(r.status(), 206);
        assert_eq!(r.body().len(), Some(10));
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=99999-"));
        assert_eq!(get(&site, "/style.css", h).status(), 416);
        let r = get(&site, "/posts", HeaderMap::new());
        assert_eq!(r.status(), 301);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://example.org:8443/posts/"
        );
        assert_eq!(get(&site, "/posts/", HeaderMap::new()).status(), 403);
        assert_eq!(get(&site, "/../etc/passwd", HeaderMap::new()).status(), 400);
        assert_eq!(get(&site, "/%zz", HeaderMap::new()).status(), 400);
    }

    #[test]
    fn ranges_parse_like_nginx() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        let parts = |p: &[(u64, u64)]| RangeAnswer::Parts(p.to_vec());
        assert_eq!(parse_range(&v("bytes=0-0"), 10), parts(&[(0, 1)]));
        assert_eq!(parse_range(&v("bytes=-3"), 10), parts(&[(7, 10)]));
        assert_eq!(parse_range(&v("bytes=5-100"), 10), parts(&[(5, 10)]));
        assert_eq!(parse_range(&v("BYTES=0-1"), 10), parts(&[(0, 2)]));
        assert_eq!(
            parse_range(&v("bytes= 1 - 2 , 4-5"), 10),
            parts(&[(1, 3), (4, 6)])
        );
        assert_eq!(parse_range(&v("bytes=0-0,-0"), 10), parts(&[(0, 1)]));
        assert_eq!(parse_range(&v("bytes=0-1,50-60"), 10), parts(&[(0, 2)]));
        assert_eq!(parse_range(&v("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range(&v("bytes=5-2"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range(&v("bytes=abc"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(
            parse_range(&v("bytes=0-1,abc"), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(parse_range(&v("bytes=-0"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(
            parse_range(&v("bytes=99999999999999999999-"), 10),
            RangeAnswer::Unsatisfiable
        );
        // Ranges adding up to more than the file, or one starting at 0 that
        // is empty: the whole file.
        assert_eq!(parse_range(&v("bytes=0-,0-"), 10), RangeAnswer::Full);
        assert_eq!(parse_range(&v("bytes=0-6,3-9"), 10), RangeAnswer::Full);
        assert_eq!(parse_range(&v("items=1-2"), 10), RangeAnswer::Full);
        assert_eq!(parse_range(&v("bytes="), 10), RangeAnswer::Full);
    }
}
