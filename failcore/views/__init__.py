"""Views: how tape events are shown to a person (terminal tables, numbers, run summaries).

Pure presentation over events already on the tape: nothing here reaches back into the proxy.
`fmt` formats sizes, money, tokens and times; `tables` builds rich tables that fit the terminal;
`runtime` reads the runtime's tool/fs/exec/connect events for every view (and `diff`).
"""
