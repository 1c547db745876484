from bnlab.cli import app

app(prog_name="bnlab")
