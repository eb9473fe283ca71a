from lipsweep.cli import app

app(prog_name="lipsweep")
