//! Which stream message the session writer sends next.
//!
//! Every stream has its own queue, and the writer picks among the streams that have something
//! to send by start-time fair queueing (SFQ, Goyal et al. 1996): a message gets a start tag,
//! the later of the scheduler's virtual time and the finish tag of its stream's previous
//! message, and a finish tag, its start plus its size. The writer sends the message with the
//! smallest start tag and moves the virtual time to it. Streams share the link by bytes, and a
//! stream that was quiet (an interactive `exec`) has a start tag no later than the message in
//! service, so its next message goes out right after that one: behind at most one frame of a
//! bulk stream, never behind a bulk stream's backlog.
//!
//! The backlog itself is kept short: a stream has at most one DATA message queued here (its
//! writer waits until that one is taken), so a bulk copy waits in the socket it reads from, not
//! in our memory.
//!
//! Messages of one stream keep their order (CONNECT, OPEN_RESULT, DATA…, FIN, RESET).
//! GO_AWAY goes out only once every CONNECT queued before it has been sent, so the peer has
//! seen every stream opened before the session started draining.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use stream_proto::{ConnectId, Message, MessageType};

/// What a message costs in the schedule besides its payload: headers and framing, and enough
/// that empty messages advance the clock.
const MESSAGE_COST: u64 = 64;

/// A message for the writer.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) msg: Message,
    /// Holds a permit of the session's write budget, returned once the writer has taken it.
    pub(crate) budgeted: bool,
}

#[derive(Default)]
struct StreamQueue {
    /// Messages with their start tags, in stream order.
    messages: VecDeque<(u64, Outbound)>,
    /// Finish tag of the last message queued.
    finish: u64,
    /// A DATA message is queued; the stream's writer waits until it is taken.
    data_queued: bool,
    /// The stream's writer, waiting for `data_queued` to clear.
    waker: Option<Waker>,
    /// The stream is gone: forget the queue once it has drained.
    gone: bool,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<ConnectId, StreamQueue>,
    /// The head of every non-empty queue, by (start tag, stream).
    ready: BTreeSet<(u64, ConnectId)>,
    /// Start tag of the last message handed to the writer.
    virtual_time: u64,
    /// CONNECT messages queued and not yet handed to the writer.
    unsent_connects: usize,
    go_away: Option<Message>,
    closed: bool,
}

/// The per-stream queues of one session and the order the writer drains them in.
#[derive(Default)]
pub(crate) struct Scheduler {
    inner: Mutex<Inner>,
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues `msg` behind everything `id` queued before. False once the session is over.
    pub(crate) fn push(&self, id: ConnectId, msg: Message, budgeted: bool) -> bool {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.closed {
            return false;
        }
        let is_data = msg.kind == MessageType::Data;
        if msg.kind.is_connect() {
            inner.unsent_connects += 1;
        }
        let virtual_time = inner.virtual_time;
        let cost = msg.data.len() as u64 + MESSAGE_COST;
        let queue = inner.queues.entry(id).or_default();
        let start = queue.finish.max(virtual_time);
        queue.finish = start + cost;
        queue.data_queued |= is_data;
        queue
            .messages
            .push_back((start, Outbound { msg, budgeted }));
        if queue.messages.len() == 1 {
            inner.ready.insert((start, id));
        }
        true
    }

    /// Queues GO_AWAY behind every CONNECT queued so far. False once the session is over.
    pub(crate) fn push_go_away(&self, msg: Message) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.go_away = Some(msg);
        true
    }

    /// Ready when stream `id` may queue a DATA message: it has none waiting. Pending
    /// registers the stream's waker, woken when the writer takes that message.
    pub(crate) fn poll_data_slot(&self, id: ConnectId, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        match inner.queues.get_mut(&id) {
            Some(queue) if queue.data_queued => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// The next message to write, if any: the session's GO_AWAY as soon as no CONNECT is
    /// ahead of it, else the stream message with the smallest start tag.
    pub(crate) fn pop(&self) -> Option<Outbound> {
        let mut waker = None;
        let next = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            // GO_AWAY goes as soon as no CONNECT is ahead of it: waiting for every queue to
            // run dry could hold it back for as long as bulk streams keep sending.
            if inner.unsent_connects == 0
                && let Some(msg) = inner.go_away.take()
            {
                return Some(Outbound {
                    msg,
                    budgeted: false,
                });
            }
            match inner.ready.pop_first() {
                Some((start, id)) => {
                    inner.virtual_time = inner.virtual_time.max(start);
                    let queue = inner.queues.get_mut(&id)?;
                    let (_, out) = queue.messages.pop_front()?;
                    if out.msg.kind == MessageType::Data {
                        queue.data_queued = false;
                        waker = queue.waker.take();
                    }
                    let next_start = queue.messages.front().map(|(tag, _)| *tag);
                    let forget = next_start.is_none() && queue.gone;
                    match next_start {
                        Some(tag) => {
                            inner.ready.insert((tag, id));
                        }
                        None if forget => {
                            inner.queues.remove(&id);
                        }
                        None => {}
                    }
                    if out.msg.kind.is_connect() {
                        inner.unsent_connects = inner.unsent_connects.saturating_sub(1);
                    }
                    Some(out)
                }
                None => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        next
    }

    /// The stream is gone: its queue is forgotten once the writer has drained it.
    pub(crate) fn forget(&self, id: ConnectId) {
        let mut inner = self.lock();
        if let Some(queue) = inner.queues.get_mut(&id) {
            if queue.messages.is_empty() {
                inner.queues.remove(&id);
            } else {
                queue.gone = true;
            }
        }
    }

    /// The session is over: everything queued is dropped, and stream writers waiting for a
    /// slot are woken (they then find the session closed).
    pub(crate) fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.ready.clear();
            inner.go_away = None;
            std::mem::take(&mut inner.queues)
                .into_values()
                .filter_map(|q| q.waker)
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Streams with a queue (for tests).
    #[cfg(test)]
    fn queues(&self) -> usize {
        self.lock().queues.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn data(id: u64, len: usize) -> (ConnectId, Message) {
        (
            ConnectId(id),
            Message::new(ConnectId(id), MessageType::Data, Bytes::from(vec![0; len])),
        )
    }

    fn order(s: &Scheduler) -> Vec<(u64, MessageType)> {
        std::iter::from_fn(|| s.pop())
            .map(|o| (o.msg.connect_id.0, o.msg.kind))
            .collect()
    }

    #[test]
    fn a_quiet_stream_goes_right_after_the_frame_in_service() {
        let s = Scheduler::default();
        let (bulk, frame) = data(1, 65536);
        assert!(s.push(bulk, frame.clone(), true));
        // The bulk frame is in service; the bulk stream queues its next one at once.
        assert_eq!(s.pop().map(|o| o.msg.connect_id), Some(bulk));
        assert!(s.push(bulk, frame, true));
        let (echo, keystroke) = data(2, 64);
        assert!(s.push(echo, keystroke, true));
        assert_eq!(
            order(&s),
            vec![(2, MessageType::Data), (1, MessageType::Data)]
        );
    }

    #[test]
    fn busy_streams_share_by_bytes() {
        let s = Scheduler::default();
        // Stream 1 sends 4 KiB messages, stream 2 1 KiB ones: per byte, 2 goes four times
        // as often.
        for _ in 0..4 {
            let (a, m) = data(1, 4096);
            s.push(a, m, false);
        }
        for _ in 0..16 {
            let (b, m) = data(2, 1024);
            s.push(b, m, false);
        }
        let sent = order(&s);
        let first_half: Vec<_> = sent[..10].iter().map(|(id, _)| *id).collect();
        let ones = first_half.iter().filter(|&&id| id == 1).count();
        assert!((2..=3).contains(&ones), "{first_half:?}");
    }

    #[test]
    fn stream_order_holds_and_go_away_waits_for_connects() {
        let s = Scheduler::default();
        s.push(
            ConnectId(1),
            Message::new(ConnectId(1), MessageType::ExecConnect, Bytes::new()),
            false,
        );
        s.push_go_away(Message::new(
            ConnectId(0),
            MessageType::GoAway,
            Bytes::new(),
        ));
        let (a, m) = data(1, 10);
        s.push(a, m, false);
        s.push(
            ConnectId(1),
            Message::new(ConnectId(1), MessageType::Fin, Bytes::new()),
            false,
        );
        assert_eq!(
            order(&s),
            vec![
                (1, MessageType::ExecConnect),
                (0, MessageType::GoAway),
                (1, MessageType::Data),
                (1, MessageType::Fin),
            ]
        );
    }

    #[test]
    fn one_data_message_per_stream_and_queues_are_forgotten() {
        let s = Scheduler::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (a, m) = data(1, 10);
        assert!(s.poll_data_slot(a, &mut cx).is_ready());
        s.push(a, m, true);
        assert!(s.poll_data_slot(a, &mut cx).is_pending());
        s.forget(a);
        assert_eq!(s.queues(), 1, "kept until drained");
        assert!(s.pop().is_some());
        assert!(s.poll_data_slot(a, &mut cx).is_ready());
        assert_eq!(s.queues(), 0);
        s.close();
        let (b, m) = data(2, 10);
        assert!(!s.push(b, m, false));
    }
}
