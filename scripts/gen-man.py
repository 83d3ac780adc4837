#!/usr/bin/env python3
"""Man pages for rtvisor: rtvisorctl(1), rtvisor-vmm(1) and rtvisord(8) from each binary's
swift-argument-parser description (`--experimental-dump-help`: the same abstracts, options and
defaults as --help), plus the sections an administrator looks for that the parser does not know
(EXIT STATUS, FILES, ENVIRONMENT, SEE ALSO); rtvisor-vm.json(5) from
docs/vm-definition.schema.json, so the page names every field the validator accepts.

    scripts/gen-man.py BINDIR OUTDIR      writes OUTDIR/{rtvisorctl.1,rtvisor-vmm.1,rtvisord.8,rtvisor-vm.json.5}
"""
import json, os, subprocess, sys, time

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SPECIAL = {"\u2014": "\\(em", "\u2013": "\\(en", "\u2019": "'", "\u2026": "...", "\u00b5": "\\(mc", "\u2192": "\\(->"}


def esc(text):
    """roff-safe text: backslashes, leading dots and quotes, hyphens that are minus signs."""
    out = []
    for line in str(text).split("\n"):
        line = line.replace("\\", "\\e").replace("-", "\\-")
        # groff reads the page as Latin-1 (man-db may not preprocess it): non-ASCII as escapes.
        line = "".join(c if ord(c) < 128 else SPECIAL.get(c, f"\\[u{ord(c):04X}]") for c in line)
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def paragraphs(text):
    """A discussion as roff paragraphs (blank lines separate them)."""
    blocks = [b.strip() for b in str(text).split("\n\n") if b.strip()]
    return "\n.PP\n".join(esc(" ".join(b.split("\n"))) for b in blocks)


def flag_names(arg):
    names = []
    for n in arg.get("names", []):
        names.append(("\\-" if n["kind"] == "short" else "\\-\\-" if n["kind"] == "long" else "\\-") + esc(n["name"]))
    return names


def shown(arg, top):
    """Subcommands repeat --help and --version: listed once, at the top."""
    builtin = any(n["name"] in ("help", "version") for n in arg.get("names", []))
    return arg.get("shouldDisplay", True) and (top or not builtin)


def synopsis(cmd, path, top=False):
    parts = [f".B {esc(path)}"]
    for a in cmd.get("arguments", []):
        if not shown(a, top):
            continue
        value = esc(a.get("valueName", ""))
        if a["kind"] == "positional":
            item = f"\\fI{value}\\fR" + ("..." if a.get("isRepeating") else "")
        else:
            name = flag_names(a)[0] if a.get("names") else ""
            item = f"\\fB{name}\\fR" + (f" \\fI{value}\\fR" if a["kind"] == "option" else "")
        parts.append(f"[{item}]" if a.get("isOptional") else item)
    if cmd.get("subcommands"):
        parts.append("\\fICOMMAND\\fR")
    return parts[0] + "\n" + " ".join(parts[1:])


def options(cmd, top=False):
    out = []
    for a in cmd.get("arguments", []):
        if not shown(a, top):
            continue
        value = esc(a.get("valueName", ""))
        if a["kind"] == "positional":
            head = f"\\fI{value}\\fR"
        else:
            head = ", ".join(f"\\fB{n}\\fR" for n in flag_names(a)) + (f" \\fI{value}\\fR" if a["kind"] == "option" else "")
        text = esc(a.get("abstract", ""))
        if a.get("allValues"):
            text += " One of: " + esc(", ".join(a["allValues"])) + "."
        if a.get("defaultValue") not in (None, "", "false"):
            text += f" Default: {esc(a['defaultValue'])}."
        if a.get("discussion"):
            text += "\n" + paragraphs(a["discussion"])
        out.append(f".TP\n{head}\n{text}")
    return "\n".join(out)


def command_page(binary, section, extra):
    dump = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout)
    cmd = dump["command"]
    name = cmd["commandName"]
    version = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    page = [f'.TH {esc(name.upper())} {section} "{date}" "rtvisor {esc(version)}" "rtvisor"',
            ".SH NAME", f"{esc(name)} \\- {esc(cmd.get('abstract', '').rstrip('.'))}",
            ".SH SYNOPSIS", synopsis(cmd, name, top=True)]
    page += [".SH DESCRIPTION", paragraphs(extra.get("description", cmd.get("abstract", "")))]
    if cmd.get("discussion"):
        page += [".PP", paragraphs(cmd["discussion"])]
    page += [".SH OPTIONS", options(cmd, top=True)]
    subs = [s for s in cmd.get("subcommands", []) if s.get("shouldDisplay", True) and s["commandName"] != "help"]
    if subs:
        page.append(".SH COMMANDS")
        for s in subs:
            page += [f".SS {esc(s['commandName'])}", synopsis(s, f"{name} {s['commandName']}"), ".PP", paragraphs(s.get("abstract", ""))]
            if s.get("discussion"):
                page += [".PP", paragraphs(s["discussion"])]
            opts = options(s)
            if opts:
                page += [".RS", opts, ".RE"]
    for title in ("EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"):
        if title in extra:
            page += [f".SH {title}", extra[title]]
    return name, "\n".join(page) + "\n"


def table(rows):
    return "\n".join(f".TP\n{a}\n{b}" for a, b in rows)


CTL = {
    "description": "rtvisorctl controls rtvisord, the rtvisor VM daemon, through its control API "
                   "(HTTP/JSON on a Unix socket). Members of the group rtvisor and root may use it. "
                   "validate works without a daemon, with the caller's own permissions.",
    "EXIT STATUS": table([
        ("0", "Success. Starting a VM that runs or stopping one that is stopped also succeeds, with a note: "
              "the VM is in the state asked for."),
        ("1", "The daemon refused or failed the request (the message and its code are on standard error; "
              "with \\fB\\-\\-json\\fR the API's error object on standard output), or a definition is invalid."),
        ("2", "The daemon could not be reached (not running, or no access to its socket)."),
        ("3", "\\fBstatus\\fR: the daemon does not run (as \\fBsystemctl status\\fR)."),
        ("64", "Usage error: an unknown command or option, or a missing argument."),
    ]),
    "ENVIRONMENT": table([("RTVISOR_API_SOCKET", "The API socket, instead of /run/rtvisor/api.sock."),
                          ("EDITOR, VISUAL", "The editor of \\fBrtvisorctl edit\\fR.")]),
    "FILES": table([("/run/rtvisor/api.sock", "rtvisord's control API."),
                    ("/etc/rtvisor/vms/*.json", "VM definitions, see \\fBrtvisor\\-vm.json\\fR(5).")]),
    "SEE ALSO": "\\fBrtvisord\\fR(8), \\fBrtvisor\\-vmm\\fR(1), \\fBrtvisor\\-vm.json\\fR(5), \\fBjournalctl\\fR(1)",
}
VMM = {
    "description": "rtvisor\\-vmm runs one virtual machine on /dev/kvm. rtvisord starts one per VM; "
                   "run by hand, it boots a definition with the serial console on the terminal.",
    "EXIT STATUS": table([("0", "The guest powered off."), ("1", "VMM or definition error."), ("3", "Guest reset (reboot)."),
                          ("4", "Triple fault."), ("5", "KVM internal error (e.g. an emulation failure)."),
                          ("6", "Guest-reported failure (exit port)."), ("7", "vCPU entry failure or unexpected exit."),
                          ("64", "Usage error."), ("128+N", "Stopped by signal N.")]),
    "SEE ALSO": "\\fBrtvisord\\fR(8), \\fBrtvisorctl\\fR(1), \\fBrtvisor\\-vm.json\\fR(5)",
}
DAEMON = {
    "description": "rtvisord runs the VMs defined in /etc/rtvisor/vms, one rtvisor\\-vmm process each, under "
                   "systemd (rtvisord.service): restart policies, journald logging, a control API for rtvisorctl. "
                   "Run in the foreground on a terminal, it prints one line per log entry "
                   "(time, level, VM, message); under systemd it logs to the journal with structured fields "
                   "(journalctl \\-u rtvisord VM_NAME=NAME; journalctl \\-x explains each event).",
    "EXIT STATUS": table([("0", "Stopped by a signal, or \\fB\\-\\-check\\fR found every definition valid."),
                          ("1", "\\fB\\-\\-check\\fR found an invalid definition, or a fatal error."),
                          ("64", "Usage error.")]),
    "FILES": table([("/etc/rtvisor/vms/*.json", "VM definitions, see \\fBrtvisor\\-vm.json\\fR(5)."),
                    ("/run/rtvisor/", "Runtime state: api.sock, vms/NAME/ (state, console and control sockets)."),
                    ("/var/lib/rtvisor/", "Disk images, snapshots, clones' disks."),
                    ("/lib/systemd/system/rtvisord.service, rtvisor\\-guests.service", "The units: rtvisor\\-guests shuts the guests down at host shutdown."),
                    ("/usr/share/doc/rtvisor/", "The documentation (daemon.md, api.yaml and more).")]),
    "SEE ALSO": "\\fBrtvisorctl\\fR(1), \\fBrtvisor\\-vmm\\fR(1), \\fBrtvisor\\-vm.json\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)",
}


def schema_page(version):
    schema = json.load(open(os.path.join(repo, "docs/vm-definition.schema.json")))
    defs = schema.get("$defs", {})

    def kind(p):
        if "$ref" in p:
            p = defs[p["$ref"].split("/")[-1]]
        if "enum" in p:
            return "one of " + ", ".join(f'"{v}"' for v in p["enum"]) if len(p["enum"]) <= 8 else "a name (see below)"
        if "oneOf" in p:
            return " or ".join(kind(o) for o in p["oneOf"])
        if "anyOf" in p:
            return " or ".join(kind(o) for o in p["anyOf"])
        if "const" in p:
            return json.dumps(p["const"])
        t = p.get("type", "")
        if t == "integer" and "minimum" in p:
            return f"integer {p['minimum']} to {p['maximum']}"
        if t == "array":
            return "array"
        return {"object": "object", "string": "string", "boolean": "true or false"}.get(t, t)

    def fields(props, prefix, required):
        rows = []
        for key, p in props.items():
            spec = kind(p)
            if key in required:
                spec += ", required"
            if "default" in p:
                spec += f", default {json.dumps(p['default'])}"
            rows.append((f"\\fB{esc(prefix + key)}\\fR ({esc(spec)})", esc(p.get("description", ""))))
            sub = p.get("items", p) if p.get("type") == "array" else p
            if "oneOf" in p:
                sub = next((o for o in p["oneOf"] if o.get("type") == "object"), {})
            if sub.get("properties"):
                inner = prefix + key + ("[]." if p.get("type") == "array" else ".")
                rows += fields(sub["properties"], inner, sub.get("required", []))
        return rows

    features = schema["properties"]["cpu"]["properties"]["disable_features"]["items"]["enum"]
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    example = open(os.path.join(repo, "examples/daemon/example.json")).read()
    page = [f'.TH RTVISOR\\-VM.JSON 5 "{date}" "rtvisor {esc(version)}" "rtvisor"',
            ".SH NAME", "rtvisor\\-vm.json \\- rtvisor VM definition format",
            ".SH SYNOPSIS", "/etc/rtvisor/vms/\\fINAME\\fR.json",
            ".SH DESCRIPTION",
            "A VM definition is one JSON object per file. rtvisord(8) runs every *.json file in /etc/rtvisor/vms "
            "(re\\-read on \\fBsystemctl reload rtvisord\\fR); \\fBrtvisor\\-vmm \\-\\-config\\fR \\fIFILE\\fR runs one in the foreground. "
            "Unknown keys are errors (with a suggestion for a misspelt one). Relative paths resolve against the file's directory.",
            ".PP",
            "\\fBrtvisorctl validate\\fR \\fIFILE\\fR checks a file with your own permissions, files included; "
            "\\fBrtvisorctl edit\\fR \\fINAME\\fR edits one and checks it before installing it.",
            ".PP",
            "Editors that know JSON Schema complete and check definitions with "
            "/usr/share/rtvisor/vm\\-definition.schema.json (JSON Schema 2020\\-12): name it in a \"$schema\" key, which rtvisor ignores. "
            "The schema cannot check everything the validator does: files that exist and are readable, one host CPU per vCPU, "
            "unique taps, MAC addresses and disk paths, 31 PCI devices in all, an even memory_mib with hugepages, backoff_max_ms at least backoff_ms.",
            ".SH FIELDS", table(fields(schema["properties"], "", schema.get("required", []))),
            ".SH CPU FEATURES", "Names for \\fBcpu.disable_features\\fR (as in /proc/cpuinfo): " + esc(", ".join(features)) + ".",
            ".SH EXAMPLE", ".nf", esc(example.rstrip()), ".fi",
            ".SH SEE ALSO", "\\fBrtvisord\\fR(8), \\fBrtvisorctl\\fR(1), \\fBrtvisor\\-vmm\\fR(1)"]
    return "\n".join(page) + "\n"


def main():
    bindir, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    for binary, section, extra in (("rtvisorctl", 1, CTL), ("rtvisor-vmm", 1, VMM), ("rtvisord", 8, DAEMON)):
        name, text = command_page(os.path.join(bindir, binary), section, extra)
        open(os.path.join(outdir, f"{name}.{section}"), "w").write(text)
    version = subprocess.run([os.path.join(bindir, "rtvisorctl"), "--version"], check=True, capture_output=True, text=True).stdout.strip()
    open(os.path.join(outdir, "rtvisor-vm.json.5"), "w").write(schema_page(version))


if __name__ == "__main__":
    main()
