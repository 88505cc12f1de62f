from rnnkit.cli import main

main(prog_name="rnnkit")
