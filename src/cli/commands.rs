//! The commands as a one-shot run, the prompt and a control client
//! ([`super::control`]) share them: run on a node, printed on a
//! [`Console`], so that they say the same wherever they were typed.

use super::{
    Failure,
    output::{self, Console},
    transfer::{self, Input, Output},
};
use crate::{
    export::ByteRange,
    node::{Cancel, GetReport, Node},
    ticket::{Ticket, TicketOrCid},
};

/// Said when a command that needs peers had none to ask.
pub const NO_PEER: &str = ": no peer to ask (give --bootstrap ADDRESS, e.g. --bootstrap \
                           /ip4/192.0.2.7/tcp/4000, or type the command at a running node's \
                           prompt)";
/// Said when the running node a one-shot went through has no peer.
pub const NODE_HAS_NO_PEER: &str = ": the node running on this data directory has no peer (start \
                                    it with --bootstrap ADDRESS)";

/// Put: stores `input`, prints what was stored and its ticket (the last
/// line of the output), and fails with exit code 3 after that when fewer
/// than `min_copies` copies were confirmed (`no_peer`: none could be
/// asked, and what to do about it).
pub async fn put(
    node: &Node,
    console: &Console,
    input: Input,
    min_copies: Option<usize>,
    progress: bool,
    cancel: Option<Cancel>,
    no_peer: Option<&str>,
) -> Result<(), Failure> {
    let label = input.label.clone();
    let report = transfer::put(node, console, input, progress, cancel).await?;
    console.status(&transfer::put_summary(&label, &report));
    console.result(&format!("{}\n", report.ticket));
    match min_copies {
        Some(min) if report.copies < min => Err(Failure::TooFewCopies(format!(
            "{} of the {min} copies --min-copies asks for were confirmed{}",
            report.copies,
            no_peer.unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// Get into `out`; says what was written when `out` is a file, named as
/// `shown` (the path as the user typed it).
pub async fn get(
    node: &Node,
    console: &Console,
    (target, out, shown): (TicketOrCid, Output, Option<&std::path::Path>),
    range: Option<ByteRange>,
    progress: bool,
    cancel: Option<Cancel>,
) -> Result<GetReport, Failure> {
    let ticket = ticket(node, target).await?;
    let report = transfer::get(node, ticket, out, range, progress, cancel).await?;
    if let Some(path) = shown {
        console.status(&transfer::get_summary(path, &report));
    }
    Ok(report)
}

/// Status: the copies of a file that answer now. With `no_peer`, fails
/// when there was nobody to ask and nothing is known, and says that.
pub async fn status(
    node: &Node,
    console: &Console,
    target: TicketOrCid,
    no_peer: Option<&str>,
) -> Result<(), Failure> {
    let health = node.status(target).await;
    if let Some(no_peer) = no_peer
        && node.net().connected_now() == 0
        && health.holders.is_empty()
    {
        return Err(Failure::Error(format!("cannot count the copies of {}{no_peer}", health.root)));
    }
    console.result(&output::health_report(&health, node.peer_id()));
    Ok(())
}

pub async fn providers(node: &Node, console: &Console, target: TicketOrCid) -> Result<(), Failure> {
    let root = target.root();
    console.result(&output::providers_list(root, &node.providers(root).await?));
    Ok(())
}

pub async fn ls(node: &Node, console: &Console, tickets: bool) -> Result<(), Failure> {
    let roots = node.ls().await?;
    console.result(&if tickets {
        output::tickets_table(&roots)
    } else {
        output::roots_table(&roots)
    });
    Ok(())
}

/// The ticket of `target`: itself, or rebuilt from the key this node kept
/// of the root a CID names.
pub async fn ticket(node: &Node, target: TicketOrCid) -> Result<Ticket, Failure> {
    match target {
        TicketOrCid::Ticket(ticket) => Ok(ticket),
        TicketOrCid::Cid(root) => node.ticket_for(root).await?.ok_or_else(|| {
            Failure::Error(format!(
                "a CID is not a ticket, and this node has no key for {root}: give the file's \
                 ticket (the node that put or fetched it lists it with `ls --tickets`)"
            ))
        }),
    }
}

pub async fn stat(node: &Node, console: &Console) -> Result<(), Failure> {
    console.result(&output::stat_table(&node.stat().await?));
    Ok(())
}

pub async fn gc(node: &Node, console: &Console) -> Result<(), Failure> {
    console.status(&output::gc_summary(&node.gc().await?));
    Ok(())
}

/// Delete: here, and (for its owner) the copies on other nodes; says what
/// happened to each.
pub async fn delete(node: &Node, console: &Console, target: TicketOrCid) -> Result<(), Failure> {
    let root = target.root();
    let report = node.delete(target).await?;
    if report.not_owner {
        console.status(&format!(
            "deleted {root} here; this node is not its owner (it did not put it), so the copies \
             elsewhere stay: only the owner can delete them"
        ));
        return Ok(());
    }
    if !report.local && report.remote_deleted.is_empty() && report.remote_refused.is_empty() {
        return Err(Failure::Error(format!(
            "nothing to delete: {root} is not stored here and no peer held a copy for this node"
        )));
    }
    let mut line = if report.kept_for_others {
        format!(
            "dropped this node's own pin on {root}; the copy here stays for the other owners that placed it"
        )
    } else if report.local {
        format!("deleted {root} here")
    } else {
        format!("{root} was not stored here")
    };
    line.push_str(&format!("; {} peers deleted their copies", report.remote_deleted.len()));
    console.status(&line);
    let offline = "copies on nodes offline now may be repaired until their lease ends";
    match &report.record {
        Ok(0) => console.status(&format!("delete record stored by no peer (read back): {offline}")),
        Ok(peers) => console.status(&format!(
            "delete record stored by {} (read back): no repair brings a copy back",
            output::plural(*peers as u64, "peer")
        )),
        Err(reason) => console.status(&format!(
            "delete record not confirmed ({}): {offline}",
            output::one_line(reason)
        )),
    }
    for (peer, reason) in &report.remote_refused {
        console.status(&format!("peer {peer} kept its copy: {}", output::one_line(reason)));
    }
    Ok(())
}
