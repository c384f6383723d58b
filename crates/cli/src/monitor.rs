use ciliate_api::{Client, MonitorEvent};

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum EventType {
    Drop,
    Trace,
}

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Only show events of this type.
    #[arg(long = "type", short = 't', value_enum)]
    kind: Option<EventType>,
    /// Print each event as one line of JSON.
    #[arg(short = 'o', long = "output", value_parser = ["json"])]
    output: Option<String>,
    /// Stop after this many events.
    #[arg(long, short = 'n')]
    count: Option<usize>,
}

pub fn run(client: &Client, args: &MonitorArgs) -> anyhow::Result<()> {
    let uri = match args.kind {
        Some(EventType::Drop) => "/v1/monitor?type=drop",
        Some(EventType::Trace) => "/v1/monitor?type=trace",
        None => "/v1/monitor",
    };
    let json = args.output.is_some();
    if !json {
        eprintln!(
            "Listening for events on {}. Press Ctrl-C to quit",
            client.path().display()
        );
    }
    let mut seen = 0;
    client.stream_lines(uri, |line| {
        if json {
            println!("{line}");
        } else {
            match serde_json::from_str::<MonitorEvent>(line) {
                Ok(ev) => println!("{ev}"),
                Err(_) => println!("{line}"),
            }
        }
        seen += 1;
        args.count.is_none_or(|n| seen < n)
    })?;
    Ok(())
}
