from fst.cli import main

main()
