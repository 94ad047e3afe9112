//! Waiting for the signals that stop a process (SIGTERM from Kubernetes, Ctrl-C at a terminal).

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only, if SIGTERM cannot be watched).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// `stream`'s items until `stop` turns true, then `last`'s item if it gives one, then the end:
/// how a stream a server serves for as long as its client wants (a watch, lease keep-alives)
/// ends when the server stops, rather than hold the stop up.
pub fn until_stopped<S, L>(
    stop: tokio::sync::watch::Receiver<bool>,
    stream: S,
    last: L,
) -> impl futures::Stream<Item = S::Item> + Send
where
    S: futures::Stream + Send + 'static,
    S::Item: Send,
    L: FnOnce() -> Option<S::Item> + Send + 'static,
{
    use futures::StreamExt;
    let state = Some((Box::pin(stream), stop, last));
    futures::stream::unfold(state, |state| async move {
        let (mut stream, mut stop, last) = state?;
        tokio::select! {
            biased;
            () = stopped(&mut stop) => last().map(|item| (item, None)),
            item = stream.next() => Some((item?, Some((stream, stop, last)))),
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::until_stopped;

    #[test]
    fn a_stream_ends_with_its_last_item_when_stopped_and_as_it_is_otherwise() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            // Ends by itself: all its items, and no last one.
            let (_stop, stopping) = tokio::sync::watch::channel(false);
            let whole: Vec<u32> = until_stopped(stopping, futures::stream::iter([1, 2]), || Some(9)).collect().await;
            assert_eq!(whole, [1, 2]);
            // Never ends by itself: what came before the stop, then the last item.
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
            let mut stream = Box::pin(until_stopped(stopping, rx, || Some(9)));
            tx.unbounded_send(1).expect("send");
            assert_eq!(stream.next().await, Some(1));
            stop.send_replace(true);
            tx.unbounded_send(2).expect("send");
            assert_eq!(stream.next().await, Some(9), "the stop comes before what is queued after it");
            assert_eq!(stream.next().await, None);
            // Stopped before it began, with no last item: nothing.
            let (stop, stopping) = tokio::sync::watch::channel(false);
            stop.send_replace(true);
            let none: Vec<u32> = until_stopped(stopping, futures::stream::iter([1]), || None).collect().await;
            assert!(none.is_empty());
        });
    }
}
