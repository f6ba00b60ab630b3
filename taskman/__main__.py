from taskman.cli import main

main()
