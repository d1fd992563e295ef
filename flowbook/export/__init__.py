"""Exporters: a notebook's flow as a FlowSpec file (flowbook or Metaflow), and later
production schedulers. Each exporter is imported only when used."""
