from kd.cli.main import main

main()
