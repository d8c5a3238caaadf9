from clawtrace.cli import main

main()
