//! iroh QUIC transport of the Link seam (in progress).
