//! Reading queries and writing the stub's own answers (the DNS wire format is hickory-proto's).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// What a datagram (or TCP message) from a client is.
pub(crate) enum Incoming {
    /// Not answered: the header is unreadable, or it is a response.
    Drop,
    /// Answered at once with this error (FORMERR, NOTIMP).
    Error(Vec<u8>, ResponseCode),
    /// A query with exactly one question.
    Query(Box<Message>),
}

/// Classifies a client message; `our_payload` is the EDNS payload size the stub advertises.
pub(crate) fn read_query(bytes: &[u8], our_payload: u16) -> Incoming {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Incoming::Drop;
    };
    if header.message_type() != MessageType::Query {
        return Incoming::Drop;
    }
    let bare = |rcode| {
        let mut m = Message::new();
        let mut h = Header::response_from_request(&header);
        h.set_recursion_available(true).set_response_code(rcode);
        m.set_header(h);
        Incoming::Error(encode(&m), rcode)
    };
    if header.op_code() != OpCode::Query {
        return bare(ResponseCode::NotImp);
    }
    let Ok(msg) = Message::from_vec(bytes) else {
        return bare(ResponseCode::FormErr);
    };
    if msg.queries().len() != 1 {
        return Incoming::Error(
            response(&msg, ResponseCode::FormErr, Vec::new(), false, our_payload),
            ResponseCode::FormErr,
        );
    }
    Incoming::Query(Box::new(msg))
}

fn encode(m: &Message) -> Vec<u8> {
    // Encoding what the stub built itself cannot fail short of a bug; an empty reply is then
    // dropped by the caller rather than sent.
    m.to_vec().unwrap_or_default()
}

/// The canonical form of a query name (lower-case ASCII, trailing dot), or `None` when a label
/// holds anything other than letters, digits, `-` and `_`.
pub(crate) fn canonical(name: &Name) -> Option<String> {
    if name.is_root() {
        return None;
    }
    let mut out = String::with_capacity(name.len() + 1);
    for label in name.iter() {
        if label.is_empty() {
            return None;
        }
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(char::from(b.to_ascii_lowercase()));
            } else {
                return None;
            }
        }
        out.push('.');
    }
    Some(out)
}

/// The stub's own response to `req`: RD and CD copied, RA set, AA clear, the question echoed,
/// an OPT record if the query had one. Over UDP the answer is limited to 512 bytes, or the
/// query's EDNS size (at most `our_payload`); a larger one loses its answers and gets TC.
pub(crate) fn response(
    req: &Message,
    rcode: ResponseCode,
    answers: Vec<Record>,
    udp: bool,
    our_payload: u16,
) -> Vec<u8> {
    let mut m = Message::new();
    let mut h = Header::response_from_request(req.header());
    h.set_recursion_available(true).set_response_code(rcode);
    m.set_header(h);
    m.add_queries(req.queries().iter().cloned());
    let limit = match (udp, req.extensions()) {
        (false, _) => usize::from(u16::MAX),
        (true, None) => 512,
        (true, Some(e)) => usize::from(e.max_payload().clamp(512, our_payload.max(512))),
    };
    if req.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(our_payload).set_version(0);
        m.set_edns(edns);
    }
    m.add_answers(answers);
    let bytes = encode(&m);
    if bytes.len() <= limit {
        return bytes;
    }
    m.take_answers();
    m.set_truncated(true);
    encode(&m)
}

/// The answer records for a proxy pair: `A` => v4, `AAAA` => v6, anything else none (NODATA).
pub(crate) fn proxy_records(q: &Query, ttl: u32, v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<Record> {
    use hickory_proto::rr::RecordType;
    match q.query_type() {
        RecordType::A => vec![Record::from_rdata(q.name().clone(), ttl, RData::A(A(v4)))],
        RecordType::AAAA => vec![Record::from_rdata(
            q.name().clone(),
            ttl,
            RData::AAAA(AAAA(v6)),
        )],
        _ => Vec::new(),
    }
}

/// Whether `bytes` is an upstream's response to the query with `id` and question `q`.
pub(crate) fn is_response_to(bytes: &[u8], id: u16, q: &Query) -> bool {
    let Ok(m) = Message::from_vec(bytes) else {
        return false;
    };
    if m.message_type() != MessageType::Response || m.id() != id {
        return false;
    }
    match m.queries() {
        [rq] => rq == q,
        // Some servers drop the question from error responses.
        [] => m.response_code() != ResponseCode::NoError,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;

    fn request(edns: Option<u16>) -> Message {
        let mut m = Message::new();
        m.set_id(9).set_recursion_desired(true);
        m.add_query(Query::query(
            Name::from_ascii("app.corp.test.").unwrap(),
            RecordType::A,
        ));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    #[test]
    fn udp_answers_over_the_limit_are_truncated() {
        let q = request(None).queries()[0].clone();
        let many: Vec<Record> = (0..40)
            .map(|i| {
                Record::from_rdata(
                    q.name().clone(),
                    30,
                    RData::A(A(Ipv4Addr::new(100, 96, 0, i))),
                )
            })
            .collect();
        for (req, udp, fits) in [
            (request(None), true, false),
            (request(Some(1400)), true, true),
            (request(Some(600)), true, false),
            (request(None), false, true),
        ] {
            let b = response(&req, ResponseCode::NoError, many.clone(), udp, 1232);
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.truncated(), !fits, "{:?} udp={udp}", req.extensions());
            assert_eq!(m.answers().len(), if fits { 40 } else { 0 });
            assert_eq!(m.queries(), req.queries());
            assert_eq!(m.extensions().is_some(), req.extensions().is_some());
            let limit = if !udp {
                65535
            } else {
                req.extensions()
                    .as_ref()
                    .map_or(512, |e| e.max_payload().min(1232))
            };
            assert!(b.len() <= usize::from(limit), "{} > {limit}", b.len());
        }
        // One record fits without EDNS.
        let one = response(
            &request(None),
            ResponseCode::NoError,
            many[..1].to_vec(),
            true,
            1232,
        );
        assert!(!Message::from_vec(&one).unwrap().truncated());
    }

    #[test]
    fn canonical_names_are_lower_case_ldh_only() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(
            canonical(&n("App.Corp.TEST.")).as_deref(),
            Some("app.corp.test.")
        );
        assert_eq!(
            canonical(&n("_sip._tcp.corp.test.")).as_deref(),
            Some("_sip._tcp.corp.test.")
        );
        assert_eq!(
            canonical(&Name::from_labels(vec![&b"app.corp"[..], &b"test"[..]]).unwrap()),
            None
        );
        assert_eq!(
            canonical(&Name::from_labels(vec![&b"\xc3\xa4pp"[..], &b"test"[..]]).unwrap()),
            None
        );
        assert_eq!(canonical(&Name::root()), None);
    }
}
