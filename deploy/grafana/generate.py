#!/usr/bin/env python3
"""Writes the three Grafana dashboards of this directory: python3 generate.py (no dependencies).
Edit here, not in the JSON, then run it and commit both."""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
def var_ds():
    return {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source", "current": {}, "hide": 0}
def var_q(name, query, label, multi=True, include_all=True):
    return {"name": name, "type": "query", "datasource": DS, "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "multi": multi, "includeAll": include_all, "allValue": ".*", "label": label, "current": {}, "sort": 1, "hide": 0}
class D:
    def __init__(s, uid, title, variables, description):
        s.uid, s.title, s.vars, s.desc = uid, title, variables, description
        s.panels, s.y, s.x, s.id = [], 0, 0, 1
    def row(s, title):
        if s.x: s.y += 8; s.x = 0
        s.panels.append({"type": "row", "title": title, "id": s.id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": s.y}, "collapsed": False, "panels": []})
        s.id += 1; s.y += 1
    def panel(s, title, targets, kind="timeseries", unit="short", w=12, desc="", extra=None):
        if s.x + w > 24: s.y += 8; s.x = 0
        p = {"type": kind, "title": title, "id": s.id, "datasource": DS, "description": desc,
             "gridPos": {"h": 8, "w": w, "x": s.x, "y": s.y},
             "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": l,
                          **({"format": "heatmap"} if kind == "heatmap" else {})} for i, (e, l) in enumerate(targets)],
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
        if kind == "heatmap":
            p["options"] = {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1, "color": {"scheme": "Oranges", "mode": "scheme"}}
        if extra: p.update(extra)
        s.panels.append(p); s.id += 1; s.x += w
        if s.x >= 24: s.y += 8; s.x = 0
    def json(s):
        return {"uid": s.uid, "title": s.title, "description": s.desc, "tags": ["taskscope"], "schemaVersion": 39, "version": 1,
                "editable": True, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "browser",
                "templating": {"list": s.vars}, "annotations": {"list": []}, "panels": s.panels}

J = 'job="taskscope"'
# Node overview
d = D("taskscope-node", "taskscope / Node overview",
      [var_ds(), var_q("instance", f'label_values(up{{{J}}}, instance)', "Node (agent)")],
      "CPU busy and idle fragmentation, memory fragmentation, pressure stalls and the busiest workloads of each node, from taskscope's kernel programs.")
I = 'instance=~"$instance"'
d.row("CPU")
d.panel("CPU busy, per CPU", [(f'taskscope_node_cpu_busy_ratio{{{I}}}', "{{instance}} cpu {{cpu}}")], unit="percentunit",
        desc="Share of each window the CPU ran something other than its idle task (measured at context switches).")
d.panel("Idle CPU time in fragments", [(f'taskscope_node_cpu_idle_fragmentation_ratio{{{I}}}', "{{instance}}")], unit="percentunit",
        desc="Share of idle CPU time that came in periods shorter than --idle-fragment-threshold: idle, but too short to run a task.")
d.panel("Busiest workloads (CPU cores)", [(f'topk(10, workload:taskscope_cpu_seconds:rate5m{{{I}}})', "{{namespace}}/{{pod}} {{container}} {{cgroup}}")], unit="short", w=24)
d.row("Memory and pressure")
d.panel("Memory fragmentation (Normal zone), by allocation order", [(f'max by (instance, order) (taskscope_node_memory_fragmentation_ratio{{{I}, zone="Normal"}})', "{{instance}} order {{order}}")], unit="percentunit",
        desc="Share of free memory that cannot serve an allocation of 2^order pages (unusable free space index).")
d.panel("Pressure stalls (share of time)", [(f'rate(taskscope_node_pressure_stall_seconds_total{{{I}}}[$__rate_interval])', "{{instance}} {{resource}} {{kind}}")], unit="percentunit",
        desc="PSI: time some (or all) non-idle tasks stalled on CPU, memory or IO.")
d.row("Work")
d.panel("Processes started / failed per second", [
    (f'sum by (instance) (rate(taskscope_tasks_started_total{{{I}}}[$__rate_interval]))', "{{instance}} started"),
    (f'sum by (instance) (rate(taskscope_tasks_exited_total{{{I}, outcome!="success"}}[$__rate_interval]))', "{{instance}} failed")], unit="ops")
d.panel("Workloads in a bad state", [(f'sum by (instance, state) (taskscope_workload_health_status{{{I}}})', "{{instance}} {{state}}")], unit="short",
        desc="Workloads starved, failing, IO-bound or churning at the latest health evaluation (/health/detailed says why).")
json.dump(d.json(), open("taskscope-node.json", "w"), indent=2)

# Workload drill-down
W = 'instance=~"$instance", namespace=~"$namespace", pod=~"$pod"'
d = D("taskscope-workload", "taskscope / Workload",
      [var_ds(), var_q("instance", f'label_values(up{{{J}}}, instance)', "Node (agent)"),
       var_q("namespace", 'label_values(taskscope_cpu_seconds_total{instance=~"$instance"}, namespace)', "Namespace"),
       var_q("pod", 'label_values(taskscope_cpu_seconds_total{instance=~"$instance", namespace=~"$namespace"}, pod)', "Pod")],
      "One workload (pod, container, or cgroup outside Kubernetes): where its time goes, its syscalls and errors, its IO and its processes.")
BY = "namespace, pod, container, cgroup"
d.row("CPU")
d.panel("CPU (cores)", [(f'sum by ({BY}) (rate(taskscope_cpu_seconds_total{{{W}}}[$__rate_interval]))', "{{pod}} {{container}} {{cgroup}}")])
d.panel("Run-queue latency", [(f'sum by (le) (rate(taskscope_runqueue_latency_seconds_bucket{{{W}}}[$__rate_interval]))', "{{le}}")], kind="heatmap", unit="s",
        desc="Waits for a CPU (runnable to running), log2 buckets from the kernel.")
d.panel("Run-queue latency p99", [(f'histogram_quantile(0.99, sum by ({BY}, le) (rate(taskscope_runqueue_latency_seconds_bucket{{{W}}}[$__rate_interval])))', "{{pod}} {{container}}")], unit="s")
d.panel("Context switches per second", [(f'sum by (kind) (rate(taskscope_context_switches_total{{{W}}}[$__rate_interval]))', "{{kind}}")], unit="ops")
d.row("Syscalls")
d.panel("Syscalls per second, busiest", [(f'topk(10, sum by (syscall) (rate(taskscope_syscalls_total{{{W}}}[$__rate_interval])))', "{{syscall}}")], unit="ops")
d.panel("Syscall errors per second, by errno", [(f'topk(10, sum by (syscall, errno) (rate(taskscope_syscall_errors_total{{{W}}}[$__rate_interval])))', "{{syscall}} {{errno}}")], unit="ops")
d.panel("Syscall latency p99", [(f'histogram_quantile(0.99, sum by (syscall, le) (rate(taskscope_syscall_latency_seconds_bucket{{{W}}}[$__rate_interval])))', "{{syscall}}")], unit="s", w=24)
d.row("Block IO")
d.panel("Block IO bytes per second", [(f'sum by (device, op) (rate(taskscope_block_io_bytes_total{{{W}}}[$__rate_interval]))', "{{device}} {{op}}")], unit="Bps")
d.panel("Block IO latency p99", [(f'histogram_quantile(0.99, sum by (device, op, le) (rate(taskscope_block_io_latency_seconds_bucket{{{W}}}[$__rate_interval])))', "{{device}} {{op}}")], unit="s")
d.panel("Block IO requests per second", [(f'sum by (device, op) (rate(taskscope_block_io_requests_total{{{W}}}[$__rate_interval]))', "{{device}} {{op}}")], unit="ops")
d.panel("Memory", [(f'sum by ({BY}) (taskscope_memory_usage_bytes{{{W}}})', "used {{pod}} {{container}}"),
                   (f'sum by ({BY}) (taskscope_memory_limit_bytes{{{W}}})', "limit {{pod}} {{container}}")], unit="bytes")
d.row("Processes")
d.panel("Processes started and exited per second", [
    (f'sum (rate(taskscope_tasks_started_total{{{W}}}[$__rate_interval]))', "started"),
    (f'sum by (outcome) (rate(taskscope_tasks_exited_total{{{W}}}[$__rate_interval]))', "exited {{outcome}}")], unit="ops")
d.panel("Running processes", [(f'sum by ({BY}) (taskscope_tasks_running{{{W}}})', "{{pod}} {{container}}")])
d.panel("Process lifetime p50 / p99", [
    (f'histogram_quantile(0.5, sum by (le) (rate(taskscope_task_duration_seconds_bucket{{{W}}}[$__rate_interval])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(taskscope_task_duration_seconds_bucket{{{W}}}[$__rate_interval])))', "p99")], unit="s")
d.panel("Health states", [(f'taskscope_workload_health_status{{{W}}}', "{{pod}} {{container}} {{state}}")],
        desc="1 while the workload is starved, failing, IO-bound or churning (/health/detailed says why).")
json.dump(d.json(), open("taskscope-workload.json", "w"), indent=2)

# Agent
A = f'{J}, instance=~"$instance"'
d = D("taskscope-agent", "taskscope / Agent health and cost",
      [var_ds(), var_q("instance", f'label_values(up{{{J}}}, instance)', "Node (agent)")],
      "Is the agent up, ready and complete, and what does it cost?")
d.row("Health")
d.panel("Up and ready", [(f'up{{{A}}}', "{{instance}} up"), (f'taskscope_ready{{{A}}}', "{{instance}} ready")], w=8)
d.panel("Component health (1 healthy, 0.5 degraded, 0 unhealthy, -1 off)", [(f'taskscope_health_status{{{A}}}', "{{instance}} {{component}}")], w=16)
d.panel("Events per second, by source", [(f'sum by (source) (rate(taskscope_events_total{{{A}}}[$__rate_interval]))', "{{source}}")], unit="ops")
d.panel("Data lost per second (not sampling)", [(f'sum by (instance, source, reason) (rate(taskscope_events_lost_total{{{A}, reason!="sampled_out"}}[$__rate_interval]))', "{{instance}} {{source}} {{reason}}")], unit="ops")
d.panel("Kubernetes pod list synced", [(f'taskscope_kubernetes_synced{{{A}}}', "{{instance}}")], w=8)
d.panel("Log lines suppressed per second", [(f'rate(taskscope_log_lines_suppressed_total{{{A}}}[$__rate_interval])', "{{instance}}")], unit="ops", w=8)
d.panel("Scrape: build time", [(f'taskscope_scrape_duration_seconds{{{A}}}', "{{instance}}")], unit="s", w=8)
d.row("Cost")
d.panel("Agent CPU (share of a core)", [(f'rate(process_cpu_seconds_total{{{A}}}[$__rate_interval])', "{{instance}}")], unit="percentunit", w=8)
d.panel("Agent resident memory", [(f'process_resident_memory_bytes{{{A}}}', "{{instance}}")], unit="bytes", w=8)
d.panel("Kernel program time per run (with --bpf-stats)", [(f'sum by (program) (rate(taskscope_bpf_program_run_seconds_total{{{A}}}[$__rate_interval])) / sum by (program) (rate(taskscope_bpf_program_runs_total{{{A}}}[$__rate_interval]))', "{{program}}")], unit="s", w=8)
d.panel("Workload series per scrape", [(f'sum by (family) (taskscope_series{{{A}}})', "{{family}}")])
d.panel("Series cut by --max-series per second", [(f'rate(taskscope_series_dropped_total{{{A}}}[$__rate_interval])', "{{instance}}")], unit="ops")
json.dump(d.json(), open("taskscope-agent.json", "w"), indent=2)
