from dsmd.cli import main

main()
