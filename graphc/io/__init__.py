"""Reading and writing graphs: the text IR (`textir`, `textcursor`), JSON (`jsonir`), `.gcg`
files (`gcg`), checkpoints (`checkpoint`), the checked node-by-node rebuild every reader
shares (`rebuild`), the readers of untrusted bytes (`untrusted`), and atomic file writes
(`atomic`)."""
